"""The report's blocks rendered twice, to Markdown and to a self-contained HTML page, so the
two never disagree. A block is a tuple: ("h1"|"h2"|"h3"|"p"|"warn", text), ("table", headers,
rows), ("figure", relative path, caption) or ("code", text, language)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import yaml

MISSING = "—"
Block = tuple


def _numeric_columns(headers: list[str], rows: list[list[str]]) -> list[bool]:
    """Which columns hold numbers (right-aligned); the first column is always a label."""
    return [i > 0 and all(str(row[i])[:1].isdigit() or str(row[i]) == MISSING for row in rows)
            for i in range(len(headers))]


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown; figures are linked by relative path."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "h3":
            out.append(f"### {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "warn":
            out.append(f"> ⚠ {block[1]}")
        elif kind == "table":
            headers, rows = block[1], block[2]
            align = ["--:" if numeric else "---" for numeric in _numeric_columns(headers, rows)]
            lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            out.append(f"![{block[2]}]({block[1]})")
        elif kind == "code":
            out.append(f"```{block[2]}\n{block[1]}\n```")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; } h2 { margin-top: 1.8em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; } th { background: #f3f3f3; }
.num { text-align: right; } .text { text-align: left; }
.warn { background: #fff3cd; border-left: 5px solid #d39e00; padding: .6em 1em; margin: 1em 0; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .88em; }
code { background: #f1f1f1; padding: 0 .2em; } pre code { background: none; padding: 0; }
figure { margin: 1.2em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: .9em; }
"""


def _inline_html(text: str) -> str:
    """Escape text, then turn Markdown's **bold** and `code` into tags."""
    escaped = html.escape(str(text))
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def render_html(blocks: list[Block], title: str, base_dir: Path) -> str:
    """The blocks as one HTML page that needs nothing else: CSS inline, figures as data URIs."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "warn":
            out.append(f'<div class="warn">⚠ {_inline_html(block[1])}</div>')
        elif kind == "table":
            numeric = _numeric_columns(block[1], block[2])
            head = "".join(f'<th class="{"num" if n else "text"}">{_inline_html(h)}</th>' for h, n in zip(block[1], numeric))
            body = "".join("<tr>" + "".join(f'<td class="{"num" if n else "text"}">{_inline_html(c)}</td>'
                                            for c, n in zip(row, numeric)) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode((base_dir / block[1]).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                       f"<figcaption>{_inline_html(block[2])}</figcaption></figure>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
    body = "\n".join(out)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def reproducibility(meta: dict, config: dict) -> list[Block]:
    """The command, the package versions and the configuration of a run, as blocks."""
    blocks: list[Block] = [("p", "Command:"), ("code", str(meta.get("command") or "not recorded"), "sh")]
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        blocks.append(("table", ["package", "version"], [[str(k), str(v)] for k, v in versions.items()]))
    if config:
        blocks.append(("p", "Configuration:"))
        blocks.append(("code", yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(), "yaml"))
    return blocks
