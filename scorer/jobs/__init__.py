"""Jobs over runs and OUTPUT that users start by name: evaluate late labels, report a run, bench
throughput, generate histories. They call the pipeline and the model; nothing below imports them."""
