"""intent-scorer: batch scoring of purchase-intent models over Parquet with async Ray actors.

The library API (the CLI, the jobs and notebooks all call these)::

    import scorer
    model = scorer.load_model()            # the bundled model; checksum verified
    scored = model.score(table)            # one Arrow table in-process, the code actors run
    summary = scorer.score("sessions/", "scored/", actors=2)   # the whole Ray job
"""

from scorer._version import __version__
from scorer.config import JobConfig, load_config
from scorer.errors import ScorerError


def load_model(model_dir=None, threads: int = 1):
    """Load a model directory (default: the bundled model); see `scorer.model.runtime.load_model`."""
    from scorer.model.runtime import load_model as _load

    return _load(model_dir, threads=threads)


def score(input=None, output=None, **options):
    """Run a scoring job; see `scorer.pipeline.entry.score`."""
    from scorer.pipeline.entry import score as _score

    return _score(input, output, **options)


__all__ = ["JobConfig", "ScorerError", "__version__", "load_config", "load_model", "score"]
