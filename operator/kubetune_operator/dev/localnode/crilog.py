"""Reading the CRI-format container logs the shim writes (`<RFC3339Nano> <stream> F|P <text>`).

A `P` (partial) record is continued by the next record of the same stream; `F` ends a line. The
kubelet's log options are applied here: `tailLines`, `limitBytes`, `sinceSeconds`/`sinceTime`,
`timestamps` (each line prefixed by its RFC3339Nano time and a space).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LogLine:
    time: str
    stream: str
    text: bytes  # with its trailing newline when complete

    def render(self, timestamps: bool) -> bytes:
        return (self.time.encode() + b" " + self.text) if timestamps else self.text


def parse_time(ts: str) -> float:
    """RFC3339(Nano) to epoch seconds (nanoseconds beyond microseconds dropped)."""
    ts = ts.rstrip("Z")
    if "." in ts:
        head, frac = ts.split(".", 1)
        ts = f"{head}.{frac[:6]}"
    else:
        ts += ".0"
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


class LineAssembler:
    """Turns CRI records into whole lines; keeps a partial line per stream until it completes."""

    def __init__(self) -> None:
        self.partial: dict[str, tuple[str, bytes]] = {}
        self.rest = b""

    def feed(self, data: bytes) -> Iterator[LogLine]:
        data = self.rest + data
        *records, self.rest = data.split(b"\n")
        for record in records:
            parts = record.split(b" ", 3)
            if len(parts) < 4:
                continue
            ts, stream, tag, text = parts[0].decode(), parts[1].decode(), parts[2], parts[3]
            first_ts, pending = self.partial.pop(stream, (ts, b""))
            if tag == b"P":
                self.partial[stream] = (first_ts, pending + text)
                continue
            yield LogLine(first_ts, stream, pending + text + b"\n")

    def flush(self) -> Iterator[LogLine]:
        """Partial lines still open (the container ended without a newline)."""
        for stream, (ts, text) in sorted(self.partial.items()):
            yield LogLine(ts, stream, text)
        self.partial.clear()


def read_lines(path: Path, offset: int = 0, final: bool = True) -> list[LogLine]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return []
    asm = LineAssembler()
    lines = list(asm.feed(data))
    if final:
        lines += list(asm.flush())
    return lines


def select(lines: list[LogLine], tail_lines: int | None = None, since: float | None = None) -> list[LogLine]:
    if since is not None:
        lines = [ln for ln in lines if parse_time(ln.time) >= since]
    if tail_lines is not None:
        lines = lines[-tail_lines:] if tail_lines > 0 else []
    return lines


def text_tail(path: Path, max_read: int = 256 * 1024) -> bytes:
    """The log's text (no CRI framing) from roughly its last `max_read` bytes."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return b""
    start = max(0, size - max_read)
    lines = read_lines(path, start)
    if start and lines:
        lines = lines[1:]  # the first record may be cut
    return b"".join(ln.text for ln in lines)
