"""What `inspect` shows about any output: its format in words, header, and tensor table.

The output is opened through the format registry (formats.families.open_output) and describes
itself; this module only renders that description as text.
"""

from __future__ import annotations

from typing import Any


def describe_output(path: str) -> dict[str, Any]:
    """JSON-ready description of an output of any registered format."""
    from ..formats.families import open_output

    with open_output(path) as output:
        return output.describe()


def render_text(info: dict[str, Any]) -> str:
    """`inspect`'s human-readable form of `describe_output`."""
    lines = [f"{info['file']}: version {info['format']}: {info['format_description']}"]
    if info["expected_size"] is not None:
        state = "matches" if info["size_matches"] else "MISMATCH"
        lines.append(f"  {info['size']} bytes (header implies {info['expected_size']}: {state})")
    else:
        lines.append(f"  {info['size']} bytes in its files")
    lines.append("  " + ", ".join(f"{k}={v}" for k, v in info["header"].items() if k != "version"))
    lines.append(f"  {'offset':>12}  {'bytes':>12}  {'dtype':<22} {'shape':<16} name")
    for t in info["tensors"]:
        lines.append(f"  {t['offset']!s:>12}  {t['nbytes']!s:>12}  {t['dtype']:<22} {str(t['shape']):<16} {t['name']}")
    return "\n".join(lines) + "\n"
