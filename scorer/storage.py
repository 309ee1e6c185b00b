"""Where files live: a local path or a filesystem URI, resolved to a ``pyarrow.fs`` filesystem.

INPUT and OUTPUT are local paths or any URI that ``pyarrow.fs.FileSystem.from_uri`` opens, query
parameters included (``s3://bucket/sessions?endpoint_override=127.0.0.1:9000&scheme=http``).
For ``s3://`` the ``[storage]`` config section (``StorageOptions``) fills in what the URI lacks,
and, because pyarrow 26 does not read them, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` fill
in an endpoint that neither gives. Precedence: URI query, then ``[storage]``, then environment.

Credentials never pass through here: pyarrow's S3 client reads the standard AWS environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``
...). A URI that carries a secret itself (``s3://KEY:SECRET@bucket``, or a query parameter named
like a key, token or password) is refused, because a URI ends up in logs, stats and in what is
shipped to the actors; so is an endpoint with user info (``user:password@host``) in the URI's
``endpoint_override``, in ``[storage]`` or in ``AWS_ENDPOINT_URL``: the S3 client would take
``user`` for the host, and the endpoint is part of every URI written. ``redact`` hides both
kinds wherever a URI is shown.

Actors run in other processes, possibly on other machines, without the driver's config or
environment. ``Location.to_spec()`` is a URI with every resolved option spelled out (endpoint,
region, scheme), so ``Location.from_spec()`` opens the same place anywhere; a ``Location`` pickles
as that spec. Credentials reach the actors as environment variables: the driver ships its
``credential_env()`` inside the actors' settings (``Location.with_credentials``), never through
Ray's ``runtime_env`` (whose agent logs ``env_vars``), and never in a URI, a log or a stats row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from scorer.errors import ConfigError, ScorerError, StorageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Query parameters whose value is (or may be) a credential, on any filesystem pyarrow opens.
_SECRET_PARAM = re.compile(r"key|secret|token|password|passwd|credential|sas|sig", re.IGNORECASE)
_SCHEMES = ("http", "https")
# Query parameters naming a server: their value may carry user info (`user:password@host`).
_ENDPOINT_PARAM = re.compile(r"endpoint", re.IGNORECASE)

# The standard AWS variables the S3 client reads; an actor needs them in its own environment.
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass(frozen=True)
class StorageOptions:
    """The ``[storage]`` config section: what an ``s3://`` URI may leave out.

    Names are those of ``pyarrow.fs.S3FileSystem`` and of its URI query parameters, so one
    vocabulary serves the URI, the config and pyarrow.
    """

    endpoint_override: str | None = None
    region: str | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"storage.{f.name} must be a non-empty string, got {value!r}")
        if self.scheme is not None and self.scheme not in _SCHEMES:
            raise ConfigError(f"storage.scheme must be 'http' or 'https', got {self.scheme!r}")
        if self.endpoint_override is not None and "@" in self.endpoint_override:
            raise ConfigError(
                f"storage.endpoint_override {_redact_endpoint(self.endpoint_override)!r} carries "
                "credentials; set them in the environment (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY)"
            )

    @classmethod
    def from_mapping(cls, section: Mapping[str, object], source: str) -> StorageOptions:
        """Build from a parsed ``[storage]`` table; errors name the key and ``source``, the file."""
        known = {f.name for f in fields(cls)}
        for key in section:
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key storage.{key} (known: {', '.join(sorted(known))})"
                )
        try:
            return cls(**section)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def as_query(self) -> dict[str, str]:
        """The options that are set, as URI query parameters."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True)
class Location:
    """A place on some filesystem: the filesystem, the path within it, and its URI.

    ``uri`` is secret-free and complete (every option explicit): it is both what messages show
    and the spec from which another process re-opens the same place.
    """

    filesystem: pafs.FileSystem = field(compare=False, repr=False)
    path: str
    uri: str
    shipped_env: Mapping[str, str] | None = field(default=None, compare=False, repr=False)
    """AWS variables this location carries when pickled (``with_credentials``); else None."""

    def with_credentials(self, environ: Mapping[str, str] | None = None) -> Location:
        """This location, pickling with the standard AWS variables of ``environ`` (this process).

        For the actors' settings only: they travel in Ray's object store and the receiving
        process puts them in its environment before it opens the filesystem. (Ray's
        ``runtime_env`` ``env_vars`` would carry them too, but its runtime-env agent writes
        them in plain text to its log.)
        """
        if self.is_local:
            return self
        return replace(self, shipped_env=credential_env(environ) or None)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, relpath: str) -> Location:
        """The location ``relpath`` (``/``-separated) below this one."""
        relpath = relpath.strip("/")
        if not relpath:
            return self
        path = f"{self.path.rstrip('/')}/{relpath}" if self.path else relpath
        if not _URI.match(self.uri):
            return Location(self.filesystem, path, path)
        parts = urlsplit(self.uri)
        uri_path = f"{parts.path.rstrip('/')}/{quote(relpath, safe='/=')}"
        return Location(self.filesystem, path, urlunsplit(parts._replace(path=uri_path)))

    def identity(self, path: str) -> str:
        """What names the file at ``path`` (a path on this location's filesystem) however it is
        reached: ``file://`` and its resolved absolute path locally (symlinks followed), else the
        scheme, the endpoint where one is set, and the bucket and key. Two roots that reach one
        file give it one identity; two files never share one (docs/input.md, "What identifies a file")."""
        if self.is_local:
            return f"file://{os.path.realpath(path)}"
        parts = urlsplit(self.uri)
        endpoint = dict(parse_qsl(parts.query)).get("endpoint_override")
        where = f"{parts.scheme}://{path.lstrip('/')}"
        return f"{where}?endpoint={redact_netloc(endpoint)}" if endpoint else where

    def to_spec(self) -> str:
        """What another process needs to re-open this location (no secrets in it)."""
        return self.uri

    @classmethod
    def from_spec(cls, spec: str, env: Mapping[str, str] | None = None) -> Location:
        """Re-open a location from ``to_spec()``; credentials come from this process's env,
        after ``env`` (shipped AWS variables) has been put in it."""
        if env:
            os.environ.update(env)
        return _open(spec)

    def __reduce__(self) -> tuple[Callable[..., Location], tuple[object, ...]]:
        # pickle the spec, never the filesystem object: a filesystem built with explicit keys
        # would carry them, and the receiving process must open its own client anyway.
        if self.shipped_env:
            return (Location.from_spec, (self.to_spec(), dict(self.shipped_env)))
        return (Location.from_spec, (self.to_spec(),))

    def __str__(self) -> str:
        return self.uri


def resolve(uri_or_path: str | os.PathLike[str], options: StorageOptions | None = None) -> Location:
    """Open a local path or a filesystem URI; ``options`` fill what an ``s3://`` URI lacks."""
    text = os.fspath(uri_or_path)
    if not _URI.match(text):
        path = os.path.abspath(os.path.expanduser(text))
        return Location(pafs.LocalFileSystem(), path, path)
    parts = urlsplit(text)
    _refuse_secrets(text, parts)
    if parts.scheme == "s3":
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        for key, value in (options or StorageOptions()).as_query().items():
            query.setdefault(key, value)
        if "endpoint_override" not in query:
            for key, value in _endpoint_from_env(os.environ).items():
                query.setdefault(key, value)
        # An object under 10 MiB (Arrow's part size) is then one PUT at close, not a multipart
        # upload's three round trips (create, part, complete): every score file and record.
        query.setdefault("allow_delayed_open", "true")
        text = urlunsplit(parts._replace(query=urlencode(query, safe=":")))
    return _open(text)


@contextmanager
def foreign_errors(
    where: str,
    doing: str,
    *,
    error: type[ScorerError] = StorageError,
    missing_ok: bool = False,
    missing: tuple[type[ScorerError], str] | None = None,
    foreign: tuple[type[BaseException], ...] = (),
    passes: tuple[type[BaseException], ...] = (),
    advice: str = "",
    first_line: bool = False,
) -> Iterator[None]:
    """The one place a foreign error becomes ours: ``error(f"{where}: {doing}: …")``
    (``translated`` spells it).

    A filesystem's ``OSError`` always; ``foreign`` adds the exception classes of a library with
    its own (botocore's, deltalake's, pyiceberg's, pyarrow's). ``passes`` are raised unchanged:
    the ones the caller handles itself (a commit another writer won, a table not yet made), as
    are errors of ours. A ``FileNotFoundError`` is ignored with ``missing_ok`` (deleting what is
    gone already), or raised as ``missing``'s class with its own wording
    (``(ShardError, "… is missing")``).
    """
    try:
        yield
    except ScorerError:
        raise
    except BaseException as exc:
        if passes and isinstance(exc, passes):
            raise
        if isinstance(exc, FileNotFoundError):
            if missing_ok:
                return
            if missing is not None:
                cls, what = missing
                raise translated(exc, where, what, error=cls) from exc
        if isinstance(exc, (OSError, *foreign)):
            raise translated(
                exc, where, doing, error=error, advice=advice, first_line=first_line
            ) from exc
        raise


def translated(
    exc: BaseException,
    where: str,
    doing: str,
    *,
    error: type[ScorerError] = StorageError,
    advice: str = "",
    first_line: bool = False,
) -> ScorerError:
    """A foreign error as ours: ``error(f"{where}: {doing}: {exc}[; {advice}]")``; with
    ``first_line``, only the first line of the foreign message (a SQL driver's run on with the
    statement and a link), or its class name when it has none. The caller raises it ``from``
    ``exc`` (``foreign_errors`` does)."""
    reason = str(exc)
    if first_line:
        reason = reason.splitlines()[0] if reason else type(exc).__name__
    return error(f"{where}: {doing}: {reason}" + (f"; {advice}" if advice else ""))


def redact(uri: str) -> str:
    """``uri`` with any credential (user info, secret-named query parameter) replaced by ``***``."""
    if not _URI.match(uri):
        return uri
    parts = urlsplit(uri)
    netloc = redact_netloc(parts.netloc)
    query = [
        (key, "***" if _SECRET_PARAM.search(key) else _redact_endpoint(value))
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe=":*@")))


def _redact_endpoint(endpoint: str) -> str:
    """``user:password@host:port`` (or ``scheme://user:password@host``) as ``***@host:port``."""
    if "@" not in endpoint:
        return endpoint
    scheme, sep, rest = endpoint.rpartition("://")
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def redact_netloc(netloc: str) -> str:
    """A host (and port) with any ``user:password@`` before it replaced by ``***@``."""
    return "***@" + netloc.rsplit("@", 1)[1] if "@" in netloc else netloc


def credential_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The standard AWS variables set here, for the actors' runtime environment.

    Never log or record the result: it holds the secrets.
    """
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in _AWS_ENV if name in environ}


def _endpoint_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL endpoint, which pyarrow 26 does not read."""
    name = "AWS_ENDPOINT_URL_S3" if environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    url = environ.get(name)
    if not url:
        return {}
    parts = urlsplit(url if _URI.match(url) else f"https://{url}")
    if "@" in parts.netloc:
        raise StorageError(
            f"{name}={_redact_endpoint(url)}: credentials in the endpoint are not accepted (the S3 "
            "client would take them for the host); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead"
        )
    return {"endpoint_override": parts.netloc, "scheme": parts.scheme}


def _refuse_secrets(uri: str, parts: SplitResult) -> None:
    secret_params = [
        k
        for k, v in parse_qsl(parts.query)
        if _SECRET_PARAM.search(k) or (_ENDPOINT_PARAM.search(k) and "@" in v)
    ]
    # On s3:// any user info is an access key pair; elsewhere only a password is a secret.
    if parts.password is not None or (parts.scheme == "s3" and parts.username) or secret_params:
        raise StorageError(
            f"{redact(uri)}: credentials in the URI are not accepted (they would reach logs and "
            "workers); set them in the environment, e.g. AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY for s3://"
        )


def _open(uri: str) -> Location:
    if not _URI.match(uri):
        return Location(pafs.LocalFileSystem(), uri, uri)
    with foreign_errors(redact(uri), "cannot open", foreign=(ValueError, pa.ArrowException)):
        filesystem, path = pafs.FileSystem.from_uri(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Location(filesystem, path, path)
    return Location(filesystem, path.rstrip("/"), uri)
