"""Comments and docstrings cite only what the repository holds.

Every .py file under hasup/, tests/ and bench/ is read as text. It may not cite a document outside
the repository: Patroni's contract or its reference notes by section, the design notes by their old
upper-case name, the issue tracker by an issue or acceptance number. A section sign must belong to
a citation of a file under docs/ (or of an RFC). A file under docs/ that is cited must exist, and
the section numbers and quoted headings cited with it must be headings of that file:
`docs/design.md` then a section sign and 4, `docs/operations.md, "Timing"`.

README.md and docs/*.md follow the same rules; there a bare section sign means the file itself.
"""

from __future__ import annotations

import bisect
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCANNED = ("hasup", "tests", "bench")
SECTION = "\u00a7"  # written as an escape, so this file holds no section sign of its own
D = "docs" + "/"  # the examples below build their citations with it, so none of them is one

# A line break inside a comment or docstring, with the next line's indentation and `#`: a citation
# may be wrapped anywhere.
WRAP = re.compile(r"[ \t]*\n[ \t]*(?:#+[ \t]*)?")
OUTSIDE = [
    (re.compile(r"\b(?:contract|reference)\s+\u00a7", re.IGNORECASE),
     "cites Patroni's contract, which is not in the repository: point to the file under docs/ that says it"),
    (re.compile(r"(?<!docs/)\bDESIGN\b"), "cites the design notes outside the repository: use docs/design.md"),
    (re.compile(r"(?<!etcd )\b[Ii]ssues?\s+#?\d+"),
     "cites the issue tracker: say what was found instead of a tracker number"),
    (re.compile(r"\b[Aa]cceptance\s+(?:criteri(?:on|a)\s+)?\d+"),
     "cites an acceptance criterion of the issue tracker: say what is checked instead"),
]
SECTION_NUMBER = r"\u00a7\s?(\d+(?:\.\d+)*)"
CITED_FILE = re.compile(r"\bdocs/([\w.-]+\.(?:md|cfg|yaml))")
# What may follow a cited file: section numbers (`, and` between them) and quoted headings.
TAIL = re.compile(r"(?:\s*(?:,|and)?\s*" + SECTION_NUMBER + r")+")
QUOTED = re.compile(r',\s*\(?"([^"\n]+)"((?:\s*(?:,|and)\s*"[^"\n]+")*)')
RFC = re.compile(r"\bRFC\s?\d+\s?$")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+(.*)$")


class Flat:
    """A file's text with wrapped lines joined, and the way back to line numbers."""

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str] = []
        self.flat_starts: list[int] = []  # where each piece starts in the flat text ...
        self.orig_starts: list[int] = []  # ... and in the original
        pos = length = 0
        for m in WRAP.finditer(text):
            for piece, orig in ((text[pos:m.start()], pos), (" ", m.start())):
                self.flat_starts.append(length)
                self.orig_starts.append(orig)
                parts.append(piece)
                length += len(piece)
            pos = m.end()
        self.flat_starts.append(length)
        self.orig_starts.append(pos)
        parts.append(text[pos:])
        self.flat = "".join(parts)

    def line(self, flat_offset: int) -> int:
        i = bisect.bisect_right(self.flat_starts, flat_offset) - 1
        orig = self.orig_starts[i] + (flat_offset - self.flat_starts[i])
        return self.text.count("\n", 0, orig) + 1


def plain(heading: str) -> str:
    return " ".join(heading.replace("`", "").replace("*", "").split())


@cache
def headings(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(section numbers, heading texts) of docs/<name>; a numbered heading's text counts with and
    without its number."""
    numbers, texts = set(), set()
    for m in HEADING.finditer((DOCS / name).read_text()):
        text = plain(m.group(1))
        texts.add(text)
        numbered = NUMBERED.match(text)
        if numbered:
            numbers.add(numbered.group(1))
            texts.add(numbered.group(2))
    return frozenset(numbers), frozenset(texts)


def problems(text: str, own_doc: str | None = None) -> list[tuple[int, str]]:
    """(line, problem) for each bad citation in text; own_doc is the docs file text comes from, which a
    bare section sign then means."""
    flat = Flat(text)
    out: list[tuple[int, str]] = []
    for pattern, why in OUTSIDE:
        for m in pattern.finditer(flat.flat):
            out.append((flat.line(m.start()), f"{m.group(0)!r} {why}"))
    covered: set[int] = set()  # offsets of the section signs that belong to a cited file
    for m in CITED_FILE.finditer(flat.flat):
        name = m.group(1)
        where = flat.line(m.start())
        if not (DOCS / name).is_file():
            out.append((where, f"docs/{name} does not exist"))
            continue
        if not name.endswith(".md"):
            continue
        numbers, texts = headings(name)
        tail = TAIL.match(flat.flat, m.end())
        if tail:
            for n in re.finditer(SECTION_NUMBER, tail.group(0)):
                covered.add(tail.start() + n.start())
                if n.group(1) not in numbers:
                    out.append((where, f"docs/{name} has no section {n.group(1)}"))
        quoted = QUOTED.match(flat.flat, tail.end() if tail else m.end())
        if quoted:
            for title in re.findall(r'"([^"\n]+)"', quoted.group(0)):
                if plain(title) not in texts:
                    out.append((where, f'docs/{name} has no heading "{title}"'))
    for m in re.finditer(SECTION, flat.flat):
        if m.start() in covered or RFC.search(flat.flat, max(0, m.start() - 12), m.start()):
            continue
        number = re.match(SECTION_NUMBER, flat.flat[m.start():])
        if own_doc is None:
            out.append((flat.line(m.start()), "a section sign that names no file: cite docs/<file>.md with it"))
        elif number is None or number.group(1) not in headings(own_doc)[0]:
            out.append((flat.line(m.start()), f"docs/{own_doc} has no section {number.group(1) if number else '?'}"))
    return sorted(out)


def report(files: list[Path], own_doc: bool = False) -> list[str]:
    found = []
    for path in files:
        own = path.name if own_doc and path.parent == DOCS else None
        for line, why in problems(path.read_text(encoding="utf-8"), own):
            found.append(f"{path.relative_to(ROOT)}:{line}: {why}")
    return found


def test_sources_cite_only_what_the_repository_holds():
    files = sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py"))
    assert len(files) > 100, "the scan found too few files: is ROOT right?"
    assert report(files) == []


def test_docs_cite_only_what_the_repository_holds():
    assert report([ROOT / "README.md", *sorted(DOCS.glob("*.md"))], own_doc=True) == []


def test_the_check_sees_each_kind_of_bad_citation():
    # Built from pieces, so that this file itself cites nothing.
    design, issue, acceptance = "DES" + "IGN", "iss" + "ue", "accept" + "ance"
    bad = {
        f"# the generic health check (contract {SECTION}1.3)": "Patroni's contract",
        f'"""Failsafe (Reference {SECTION}3.7)."""': "Patroni's contract",
        f"# the lease rule ({design}.md {SECTION}4)": "design notes",
        f"# the lease rule ({design} {SECTION}4)": "design notes",
        f"# found in {issue} 13": "issue tracker",
        f'"""{issue.title()} 12, {acceptance} 7: ..."""': "issue tracker",
        f"# -- {acceptance} 4: bounds --": "acceptance criterion",
        f"# what {SECTION}4 promises": "names no file",
        f"# {D}design.md {SECTION}99": "no section 99",
        f"# {D}design.md {SECTION}4 and {SECTION}98": "no section 98",
        f'# {D}operations.md, "No such heading"': 'no heading "No such heading"',
        f"# {D}nowhere.md": "does not exist",
    }
    for text, why in bad.items():
        found = problems(text)
        assert any(why in problem for _, problem in found), (text, found)


def test_the_check_accepts_citations_that_resolve():
    good = [
        f"# the lease rule ({D}design.md {SECTION}4)",
        f"# {D}design.md {SECTION}1 and {SECTION}11; {D}design.md {SECTION}8, {SECTION}11",
        f'"""What a death means ({D}design.md {SECTION}1;\n    the table is in {D}operations.md, "When a worker keeps\n'
        '    crashing")."""',
        f'# {D}rest-api.md, "TLS" and "Access control"',
        f'# ({D}rest-api.md, "/liveness and /readiness")',
        f"# {D}operator-guide.md {SECTION}3",
        f"# a half-close, as RFC 9112 {SECTION}9.6 asks",
        "# etcd issues 12528 and 15247",
    ]
    for text in good:
        assert problems(text) == [], text


def test_wrapped_citations_keep_their_line_numbers():
    text = f"x = 1\n# see {D}design.md\n# {SECTION}99 for why\n"
    assert problems(text) == [(2, f"{D}design.md has no section 99")]
