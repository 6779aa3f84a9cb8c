"""Training metrics: `<workdir>/metrics.jsonl`, TensorBoard event files in `<workdir>/tensorboard/`, and a
progress-line logger.

Each `MetricsWriter.write` appends one JSON object `{"step": ..., "wall_time": ..., <name>: <value>, ...}` and
flushes it to the operating system, so a killed process loses nothing already written; the same scalars go to
TensorBoard (tensorboardX, no TensorFlow). A reopened writer appends (a resumed run continues the same files).
Given `start_step` (the step a run resumes from), it first removes what a killed run wrote after that step, from
metrics.jsonl and from the event files, so that no step appears twice. Non-finite values are written as the
strings "NaN", "Infinity" and "-Infinity" (strict JSON has no such numbers); `read_metrics` turns them back into
floats. `write_images` adds images (the evaluation's sample grids) to TensorBoard only; `write_note` a line of text (a
record {"step", "wall_time", "note"}, and TensorBoard text). `read_tensorboard_scalars`
and `read_tensorboard_images` read the event files back.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
NOTE_KEY = "note"  # a record's text note (`MetricsWriter.write_note`), beside "step" and "wall_time"
_RESERVED = ("step", "wall_time", NOTE_KEY)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class MetricsWriter:
    """Appends one JSON line of scalars per call to `<workdir>/metrics.jsonl` (both created if missing), and the
    same scalars to TensorBoard event files in `<workdir>/tensorboard/` (tensorboard=False: not).

    start_step: a resumed run's restored step (0 for a fresh start): records of later steps, written by a run
    that was killed after its last checkpoint, are removed first. None: append to whatever is there.
    """

    def __init__(
        self,
        workdir,
        *,
        filename: str = METRICS_FILENAME,
        start_step: int | None = None,
        tensorboard: bool = True,
    ):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(os.fspath(workdir), filename)
        self.tensorboard_dir = os.path.join(os.fspath(workdir), TENSORBOARD_DIRNAME)
        if start_step is not None:
            _drop_records_after(self.path, _as_int(start_step, "start_step"))
            _drop_events_after(self.tensorboard_dir, start_step)
        self._tensorboard = SummaryWriter(self.tensorboard_dir, flush_secs=30) if tensorboard else None
        self._file = open(self.path, "a+", encoding="utf-8")
        # A process killed in the middle of a write may have left a partial last line: start on a fresh line.
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(self._file.tell() - 1)
            if self._file.read(1) != "\n":
                self._file.write("\n")
                self._file.flush()

    def write(self, step: int, scalars: Mapping[str, Any], *, wall_time: float | None = None) -> None:
        """Appends {"step": step, "wall_time": wall_time or now, **scalars} as one line and flushes it.

        Args:
          step: training step (int).
          scalars: name -> number (Python / numpy / jax scalar or size-1 array); names other than "step" and
            "wall_time".
          wall_time: seconds since the epoch; now if None.
        """
        if self._file.closed:
            raise RuntimeError(f"the MetricsWriter of {self.path} is closed")
        now = time.time() if wall_time is None else float(wall_time)
        record = {"step": _as_int(step, "step"), "wall_time": now}
        for name, value in scalars.items():
            if not isinstance(name, str) or name in _RESERVED:
                raise ValueError(f"metric name must be a string other than {_RESERVED}, got {name!r}")
            record[name] = _as_json_number(value, name)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        # flush (to the OS), not fsync: enough to survive a killed process, cheap enough for every step.
        self._file.flush()
        if self._tensorboard is not None:
            for name, value in record.items():
                if name not in _RESERVED:
                    self._tensorboard.add_scalar(
                        name, _NON_FINITE.get(value, value), record["step"], walltime=now
                    )
            self._tensorboard.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Adds uint8 images [H, W, C] (C in {1, 3}; e.g. sample grids) to TensorBoard at `step`, by tag."""
        if self._tensorboard is None:
            return
        for tag, image in images.items():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
                raise ValueError(f"image {tag!r} must be uint8 [H, W, C] with C in {{1, 3}}, got {image.dtype} {image.shape}")
            self._tensorboard.add_image(tag, image, _as_int(step, "step"), dataformats="HWC")
        self._tensorboard.flush()

    def write_note(self, step: int, text: str, *, tag: str = "notes") -> None:
        """Appends {"step": step, "wall_time": now, "note": text} (e.g. the settings a resumed run changed at
        `step`) and adds `text` to TensorBoard as text under `tag` at that step."""
        if self._file.closed:
            raise RuntimeError(f"the MetricsWriter of {self.path} is closed")
        now = time.time()
        record = {"step": _as_int(step, "step"), "wall_time": now, NOTE_KEY: str(text)}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            self._tensorboard.add_text(tag, str(text), record["step"], walltime=now)
            self._tensorboard.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in file order; "NaN" / "Infinity" strings become floats.

    A line that is not valid JSON (one cut short by a killed writer; a resumed writer then starts on a new
    line, so such a line can sit in the middle of the file) is skipped with a warning naming it.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            logging.warning(
                "Skipping line %d of %s, not valid JSON (truncated by a kill?): %s", number, path, err
            )
            continue
        records.append({k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()})
    return records


def read_tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files under `directory`, in file order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in _read_events(directory):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars


def read_tensorboard_images(directory) -> dict[str, list[tuple[int, np.ndarray]]]:
    """{tag: [(step, uint8 image [H, W, C]), ...]} of every image in the event files under `directory`."""
    images: dict[str, list[tuple[int, np.ndarray]]] = {}
    for event in _read_events(directory):
        for value in event.summary.value:
            if value.WhichOneof("value") == "image":
                with Image.open(io.BytesIO(value.image.encoded_image_string)) as png:
                    pixels = np.asarray(png)
                pixels = pixels[..., None] if pixels.ndim == 2 else pixels
                images.setdefault(value.tag, []).append((int(event.step), pixels))
    return images


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites metrics.jsonl (atomically) without the records of steps after `step`."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    kept = []
    for line in lines:
        try:
            record_step = json.loads(line).get("step") if line.strip() else None
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record_step is not None and record_step <= step:
            kept.append(line)
    if len(kept) < sum(1 for line in lines if line.strip()):
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(temporary, path)
        logging.info(
            "Removed the records after step %d from %s (written after the last checkpoint).", step, path
        )


def _drop_events_after(directory: str, step: int) -> None:
    """Rewrites the event files under `directory` into one file without the events of steps after `step`."""
    files = _event_files(directory)
    if not files:
        return
    records = [record for path in files for record in _read_records(path)]
    kept = [data for data in records if event_pb2.Event.FromString(data).step <= step]
    if len(kept) == len(records):
        return
    target = os.path.join(directory, f"events.out.tfevents.{time.time():.6f}.pvpp-resumed-at-{step}")
    with open(f"{target}.tmp", "wb") as f:  # TensorBoard reads only names with 'tfevents' and no .tmp suffix
        for data in kept:
            f.write(_record_bytes(data))
    os.replace(f"{target}.tmp", target)
    for path in files:
        os.remove(path)
    logging.info(
        "Removed the events after step %d from %s (written after the last checkpoint).", step, directory
    )


def _event_files(directory) -> list[str]:
    return sorted(
        p for p in glob.glob(os.path.join(os.fspath(directory), "*tfevents*")) if not p.endswith(".tmp")
    )


def _read_events(directory):
    for path in _event_files(directory):
        for data in _read_records(path):
            yield event_pb2.Event.FromString(data)


def _read_records(path: str) -> list[bytes]:
    """The payloads of a TFRecord file: [length u64][crc u32][data][crc u32] each; a record cut short by a kill
    ends the list."""
    with open(path, "rb") as f:
        content = f.read()
    records, at = [], 0
    while at + 12 <= len(content):
        (length,) = struct.unpack("<Q", content[at : at + 8])
        end = at + 12 + length + 4
        if end > len(content):
            break
        records.append(content[at + 12 : at + 12 + length])
        at = end
    return records


def _record_bytes(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class ProgressLogger:
    """Formats and logs (absl, INFO) a progress line: step, steps/s, images/s, scalars and the ETA.

    The rates are measured over the interval since the previous call (or since construction).

    Args:
      total_steps: the step at which training ends.
      images_per_step: images per optimizer step (the global batch size).
      start_step: the step at construction (the restored step on resume).
      clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        total_steps: int,
        images_per_step: int,
        *,
        start_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = _as_int(total_steps, "total_steps")
        self.images_per_step = _as_int(images_per_step, "images_per_step")
        if self.total_steps < 0 or self.images_per_step < 1:
            raise ValueError(
                f"total_steps must be >= 0 and images_per_step >= 1, got {total_steps} and {images_per_step}"
            )
        self._clock = clock
        self._last_step = _as_int(start_step, "start_step")
        self._last_time = clock()

    def __call__(self, step: int, scalars: Mapping[str, Any] | None = None) -> str:
        """Logs and returns the progress line for `step` (scalars: e.g. the loss parts, in nats)."""
        step = _as_int(step, "step")
        now = self._clock()
        elapsed = now - self._last_time
        # No rate without elapsed time or progress (first call at once, or a repeated step).
        made = step - self._last_step
        steps_per_sec = made / elapsed if elapsed > 0 and made > 0 else math.nan
        self._last_step, self._last_time = step, now
        line = format_progress(step, self.total_steps, steps_per_sec, self.images_per_step, scalars or {})
        logging.info("%s", line)
        return line


def format_progress(
    step: int, total_steps: int, steps_per_sec: float, images_per_step: int, scalars: Mapping[str, Any]
) -> str:
    """E.g. "step 1000/10000 (10.0%) | 5.00 steps/s | 640 images/s | loss 93.2 | relaxed KL 9.1 nats | ETA 30m 00s".

    A NaN rate (unknown) prints as "? steps/s" and "ETA ?".
    """
    percent = 100.0 * step / total_steps if total_steps > 0 else 100.0
    parts = [f"step {step}/{total_steps} ({percent:.1f}%)"]
    if math.isfinite(steps_per_sec) and steps_per_sec > 0:
        parts.append(f"{steps_per_sec:.2f} steps/s")
        parts.append(f"{steps_per_sec * images_per_step:.0f} images/s")
        eta = format_duration(max(total_steps - step, 0) / steps_per_sec)
    else:
        parts.append("? steps/s")
        parts.append("? images/s")
        eta = "?"
    shown = _named_for_people(scalars)
    for i, (name, value) in enumerate(shown.items()):
        unit = " nats" if i == len(shown) - 1 else ""
        parts.append(f"{name} {float(np.asarray(value)):.4g}{unit}")
    parts.append(f"ETA {eta}")
    return " | ".join(parts)


#: How the training metrics read in a progress line (all in nats per image).
DISPLAY_NAMES = {"loss": "loss", "reconstruction": "reconstruction", "kl": "relaxed KL", "log_Z": "log Z"}


def _named_for_people(scalars: Mapping[str, Any]) -> dict[str, Any]:
    """The scalars under the names a researcher knows: the RBM's 'kl_minus_log_z' (the relaxed KL without log Z,
    unknown during the step) becomes 'relaxed KL' once the periodic evaluation has estimated log Z.

    'log_Z_step' (optional): the step whose parameters that log Z belongs to. The RBM's log Z changes as it
    trains, so a relaxed KL formed with the log Z of an earlier step is off by that change, and can even be
    negative: both names then say the step.
    """
    values = dict(scalars)
    log_z_step = values.pop("log_Z_step", None)
    names = {**DISPLAY_NAMES, "kl_minus_log_z": "relaxed KL - log Z"}
    if "kl_minus_log_z" in values and "log_Z" in values:
        values = {("kl" if k == "kl_minus_log_z" else k): v for k, v in values.items()}
        values["kl"] = float(np.asarray(values["kl"])) + float(np.asarray(values["log_Z"]))
        if log_z_step is not None:
            step = int(np.asarray(log_z_step))
            names.update(kl=f"relaxed KL (log Z of step {step})", log_Z=f"log Z (step {step})")
    return {names.get(name, name): value for name, value in values.items()}


def format_duration(seconds: float) -> str:
    """A duration in its two largest units: "42s", "3m 05s", "7h 47m", "2d 03h"; "?" if infinite or < 0."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _as_int(value, name: str) -> int:
    array = np.asarray(value)
    if array.shape != () or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be an integer scalar, got {value!r}")
    return int(array)


def _as_json_number(value, name: str):
    """A metric value as an int / float for JSON; non-finite floats as "NaN" / "Infinity" / "-Infinity"."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
    if array.dtype.kind == "b":
        return bool(array.reshape(()))
    if array.dtype.kind in "iu":
        return int(array.reshape(()))
    if array.dtype.kind not in "fV":  # "V": ml_dtypes such as bfloat16
        raise TypeError(f"metric {name!r} must be a real number, got dtype {array.dtype}")
    number = float(array.reshape(()))
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number
