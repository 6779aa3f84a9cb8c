"""The files a run leaves: its workdir, checkpoints, their integrity records, metrics, result files, stopping.

    workdir.py    config.json, the lock, exported parameters (what a workdir holds and how it is read)
    checkpoint.py orbax checkpoints and parameter exports, written atomically and verified on restore
    integrity.py  per-array digests that detect a corrupted checkpoint or file
    metrics.py    metrics.jsonl, TensorBoard and the console progress lines
    results.py    evaluation and sample result files: atomic, never silently replaced
    stopping.py   graceful stops on SIGTERM / SIGINT
"""
