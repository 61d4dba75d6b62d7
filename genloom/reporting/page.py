"""One self-contained HTML page: inline styles, images as ``data:`` URIs, no script, no network.

The page carries a Content-Security-Policy that forbids every fetch (``default-src 'none'``), so
a page that tried to load anything from outside would show it as an error in the browser console
(the browser test fails on that). :func:`write_page` writes atomically (a temporary file in the
same folder, then ``os.replace``) and refuses to replace an existing file unless asked.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path

from genloom.core.errors import GenloomError



class ReportError(GenloomError):
    """A report or comparison cannot be made (missing run, no logs, a decoder that fails, an unwritable --out).

    The CLI prints it as one paragraph and exits with code 2."""


CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
:root { --ink:#1d2433; --muted:#5b6475; --line:#d9dee7; --accent:#2f6fdf; --bg:#f6f7f9; --ok:#1f7a3d; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--ink); background:var(--bg); }
header { background:#1d2433; color:#fff; padding:18px 32px; }
header h1 { margin:0; font-size:22px; font-weight:600; }
header p { margin:4px 0 0; color:#c8cfdb; font-size:14px; }
nav { padding:8px 32px; background:#fff; border-bottom:1px solid var(--line); font-size:14px; }
nav a { color:var(--accent); margin-right:18px; text-decoration:none; }
main { padding:8px 32px 40px; max-width:1400px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 20px; margin:18px 0; }
h2 { font-size:18px; margin:2px 0 10px; }
h3 { font-size:15px; margin:14px 0 6px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:150px; }
.card b { display:block; font-size:20px; }
.card span { color:var(--muted); font-size:13px; }
table { border-collapse:collapse; font-size:14px; margin:6px 0; }
th, td { border-bottom:1px solid var(--line); padding:5px 12px 5px 0; text-align:left; vertical-align:top; }
th { color:var(--muted); font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.figures { display:flex; flex-wrap:wrap; gap:16px; }
figure { margin:0; }
figure img { max-width:100%; border:1px solid var(--line); border-radius:4px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; }
pre { background:#f1f3f6; border-radius:6px; padding:10px 12px; white-space:pre-wrap; word-break:break-word; font:13px/1.45 ui-monospace,"DejaVu Sans Mono",Menlo,monospace; margin:4px 0; }
.prompt { color:var(--muted); }
.note { color:var(--muted); font-size:13px; }
.exact { color:var(--ok); font-size:13px; }
details.tree { margin-left:14px; }
details.tree > summary { cursor:pointer; font-weight:600; }
.leaf { margin-left:14px; font:13px ui-monospace,"DejaVu Sans Mono",monospace; }
.leaf b { font-weight:600; }
.grid { display:grid; gap:12px; }
.config { columns: 3 300px; column-gap: 24px; }
.config > details { break-inside: avoid; margin-left:0; }
.chips { display:flex; flex-wrap:wrap; gap:6px; font-size:13px; }
.chips span { border:1px solid var(--line); border-radius:12px; padding:1px 10px; }
.grid > div { min-width:0; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A number for a table: integers as integers, floats with ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "-"
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if 1e3 <= abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(data: bytes, mime: str, caption: str = "", alt: str = "", width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(data, mime)}" alt="{esc(alt or caption)}"{w}>{cap}</figure>'


def table(header: list[str], rows: list[list], numeric: set[int] | None = None, cls: str = "") -> str:
    """An HTML table; cells are escaped unless they are ``Raw``; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if isinstance(cell, Raw) else esc(fmt(cell))
            cells.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class Raw(str):
    """HTML that :func:`table` inserts as is."""


def tree(data, title: str = "config", open_levels: int = 99) -> str:
    """A nested dict/list as collapsible ``<details>`` (the first ``open_levels`` levels open);
    top-level scalars first, then one block per section, laid out in columns."""
    def node(value, depth):
        parts = []
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, v in items:
            label = f"[{key}]" if isinstance(value, list) else str(key)
            if isinstance(v, (dict, list)) and v:
                opened = " open" if depth < open_levels else ""
                parts.append(f'<details class="tree"{opened}><summary>{esc(label)}</summary>{node(v, depth + 1)}</details>')
            else:
                parts.append(f'<div class="leaf"><b>{esc(label)}</b>: {esc(_scalar(v))}</div>')
        return "".join(parts)

    if not isinstance(data, dict):
        return f'<div class="config">{node(data, 1)}</div>'
    scalars = {k: v for k, v in data.items() if not (isinstance(v, (dict, list)) and v)}
    nested = {k: v for k, v in data.items() if k not in scalars}
    return f'<p class="note">{esc(title)}</p>{node(scalars, 1)}<div class="config">{node(nested, 1)}</div>'


def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return str(v)


def document(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: ``sections`` are (anchor id, heading, inner HTML)."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(f'<section id="{esc(sid)}"><h2>{esc(heading)}</h2>{inner}</section>' for sid, heading, inner in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


# -- plots ------------------------------------------------------------------------------------
def pyplot():
    """matplotlib's pyplot on the Agg backend (imported here, never at CLI start)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_svg(fig) -> bytes:
    """A matplotlib figure as SVG bytes (fonts as paths, so the page needs no font), then closed."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "genloom"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    pyplot().close(fig)
    return buf.getvalue()


def figure_png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


# -- writing ----------------------------------------------------------------------------------
def check_out(out, overwrite: bool) -> Path:
    """Fail early (before any heavy work) when ``out`` cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out '{out}' is a directory; give a file name such as '{out / 'report.html'}'")
    if out.exists() and not overwrite:
        raise ReportError(f"'{out}' already exists; pass --overwrite (overwrite=True) to replace it, or choose another --out")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"cannot write '{out}': the folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write '{out}': the folder '{parent}' is not writable")
    return out


def write_page(out, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``out`` atomically (temporary file + ``os.replace``)."""
    out = check_out(out, overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise ReportError(f"cannot write '{out}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ReportError(f"cannot write '{out}': {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
