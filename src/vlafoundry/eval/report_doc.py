"""The report's document builder: :class:`_Doc` writes every heading, paragraph, table and image twice, as Markdown
(``report.md``, images linked) and as HTML (``report.html``, images inlined as base64 data URIs), with the page's
CSS and image-load script and the cell formatting (:func:`_fmt`, :func:`_ci`) both share.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Records, once the page has loaded, every image's natural width (0 = failed to load) in data-natural-width and a
# summary in <body data-images-loaded="k/n">; tools and tests read these from the rendered DOM.
_LOAD_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute("data-natural-width", String(imgs[i].naturalWidth));
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}figure{display:inline-block;margin:.4em;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:320px}code{background:#f5f5f5;padding:0 .2em}"""


class _Doc:
    """Builds the Markdown and HTML documents side by side."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(c) for c in r] for r in rows]
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "|".join(["---"] * len(header)) + "|")
        self.md.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path, caption: str) -> None:
        rel = path.relative_to(self.out).as_posix()
        self.md.append(f"![{caption}]({rel})\n")
        mime = "image/gif" if path.suffix.lower() == ".gif" else "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def _ci(r: Mapping[str, Any]) -> str:
    return f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
