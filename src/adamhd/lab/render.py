"""The lab's document model: a report is a list of blocks (``("h", level, text)``, ``("p", text)``,
``("ul", items)``, ``("table", header, rows)``, ``("img", path, alt)``, ``("pre", text)``),
rendered to Markdown (``render_md``) and to self-contained HTML with the images embedded
(``render_html``). Used by every report of the lab (compare, sweep, leaderboard).
"""

from __future__ import annotations

import base64
import html
import re


def _html_inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def render_md(blocks) -> str:
    out = []
    for kind, *args in blocks:
        if kind == "h":
            out.append("#" * args[0] + " " + args[1])
        elif kind == "p":
            out.append(args[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "table":
            header, rows = args
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
                      for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0].name})")
        elif kind == "pre":
            out.append("```\n" + args[0] + "\n```")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}code,pre{background:#f5f5f5;padding:0 .2em}
pre{padding:.6em;overflow-x:auto}"""


def render_html(blocks, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body>"]
    for kind, *args in blocks:
        if kind == "h":
            out.append(f"<h{args[0]}>{_html_inline(args[1])}</h{args[0]}>")
        elif kind == "p":
            out.append(f"<p>{_html_inline(args[0])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            header, rows = args
            out.append("<table><tr>" + "".join(f"<th>{_html_inline(h)}</th>" for h in header)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{_html_inline(str(c))}</td>"
                                                            for c in row) + "</tr>"
                                           for row in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode(args[0].read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(args[1])}' "
                       f"src='data:image/png;base64,{data}'></p>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(args[0])}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
