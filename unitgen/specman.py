"""``unitgen.toml(5)``: the spec key reference as a man page, from the generator of docs/spec.md.

The key reference in docs/spec.md is ``unitgen.specdoc.reference_markdown()``,
generated from the validator's key table. This turns that very text into roff,
so the man page, the Markdown page, the JSON Schema and the validator cannot
disagree. ``python -m unitgen.specman`` prints it; packaging/gen_docs.py writes it.
"""

from __future__ import annotations

import re

from unitgen import __version__

__all__ = ["reference_roff"]

_CELL_SPLIT = re.compile(r"(?<!\\)\|")

_HEAD = """\
.TH UNITGEN.TOML 5 "" "unitgen {version}" "unitgen manual"
.SH NAME
unitgen.toml \\- the spec file of unitgen: hardened units and their recovery
.SH SYNOPSIS
.nf
[defaults]            # profile and alert targets for units that name none
[alert.NAME]          # an alert target; services refer to it by NAME
[service.NAME]        # a service unitgen owns: rendered as NAME.service
[override."UNIT"]     # a unit the operator does not own: rendered as a drop\\-in
.fi
.SH DESCRIPTION
One TOML file describes every unit
.BR unitgen (1)
renders. Check one with
.BR "unitgen check SPEC" ;
editors can use the JSON Schema printed by
.BR "unitgen schema" .
This page, the schema and the validator come from one key table, so they cannot
disagree.
.PP
Durations are systemd time spans (\\(dq5s\\(dq, \\(dq1min 30s\\(dq; a bare
number is seconds); sizes are \\(dq512M\\(dq, \\(dq1G\\(dq (base 1024);
percentages \\(dq80%\\(dq. Secrets are never written into the spec: alert
targets name a file or an environment variable that holds them.
.SH KEYS
"""

_TAIL = """\
.SH SEE ALSO
.BR unitgen (1),
.BR systemd.service (5),
.BR systemd.exec (5),
.BR systemd.resource-control (5),
.BR systemd-analyze (1)
"""


def _text(s: str) -> str:
    """Markdown cell text to roff: code spans bold, escapes for roff's specials."""
    s = s.replace("\\|", "|").replace("\\", "\\\\").replace("-", "\\-")
    s = re.sub(r"`([^`]*)`", lambda m: f"\\fB{m.group(1)}\\fR", s)
    s = s.replace("\u2014", "\\(em")
    return s


def _line(s: str) -> str:
    """A roff text line must not start with . or ' (a request)."""
    return f"\\&{s}" if s[:1] in (".", "'") else s


def reference_roff() -> str:
    from unitgen.specdoc import BEGIN, END, reference_markdown

    out = [_HEAD.format(version=__version__)]
    for raw in reference_markdown().splitlines():
        line = raw.strip()
        if not line or line in (BEGIN, END) or line.startswith("|---"):
            continue
        if line.startswith("### "):
            out.append(f".SS {_text(line[4:])}")
        elif line.startswith("| key |"):
            continue
        elif line.startswith("|"):
            cells = [c.strip() for c in _CELL_SPLIT.split(line.strip("|"))]
            key, type_, default, directive, meaning = (cells + [""] * 5)[:5]
            facts = [_text(type_)]
            if default and default != "\u2014":
                facts.append(f"default {_text(default)}")
            if directive:
                facts.append(f"systemd {_text(directive)}")
            out.append(".TP")
            out.append(f"{_text(key)} ({', '.join(facts)})")
            out.append(_line(_text(meaning)))
        else:
            out.append(".PP")
            out.append(_line(_text(line)))
    out.append(_TAIL)
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_roff(), end="")
