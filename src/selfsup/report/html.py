"""report.html: one self-contained file that opens without a network.

Plots are inlined as ``data:image/png;base64`` URIs, the style sheet and the one script are inline,
and a Content-Security-Policy forbids loading anything else (``default-src 'none'``), so the page
looks the same offline, attached to an e-mail or copied without its ``plots/`` folder.

The inline script checks, once the page has loaded, that every image decoded
(``img.complete && img.naturalWidth > 0``), records the counts on ``<body>``
(``data-images-loaded`` / ``data-images-total``, which the browser test reads back) and shows a banner
when one did not.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from selfsup.report.document import Block, Document, Notes, Plot, Section, Table, Text

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.7rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; }
td { font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; font-size: .8rem; color: #57606a; text-align: left; padding-top: .3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .85rem; color: #57606a; }
nav ul { columns: 2; font-size: .9rem; }
.notes li { color: #9a6700; }
#broken-images { display: none; background: #ffebe9; border: 1px solid #cf222e; padding: .5rem; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-total", String(images.length));
  if (loaded < images.length) {
    var banner = document.getElementById("broken-images");
    banner.textContent = (images.length - loaded) + " of " + images.length + " plots could not be shown.";
    banner.style.display = "block";
  }
});
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Plot):
        caption = escape(block.caption)
        return (
            f'<figure><img src="{data_uri(block.path)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    if isinstance(block, Notes):
        return '<ul class="notes">' + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>"
    raise TypeError(f"unknown block {block!r}")


def _section(section: Section, level: int) -> str:
    tag = f"h{min(level, 6)}"
    parts = [f'<section id="{escape(section.anchor)}"><{tag}>{escape(section.title)}</{tag}>']
    parts += [_block(b) for b in section.blocks]
    parts += [_section(child, level + 1) for child in section.children]
    return "\n".join(parts) + "</section>"


def _contents(sections: list[Section]) -> str:
    items = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in sections)
    return f"<nav><ul>{items}</ul></nav>"


def render_html(document: Document) -> str:
    body = [f"<h1>{escape(document.title)}</h1>", '<div id="broken-images"></div>']
    body += [_block(b) for b in document.intro]
    if len(document.sections) > 2:
        body.append(_contents(document.sections))
    body += [_section(s, 2) for s in document.sections]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(document.title)}</title><style>{STYLE}</style></head>\n"
        "<body>\n" + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
