"""Keep the benchmark tables in the docs current: paste bench/results/*.md between include markers.

In README.md and every docs/*.md, the text between

    <!-- include: bench/results/NAME.md -->
    <!-- /include -->

is replaced with the current content of that file (which `make bench`, `make datasets` and
`make audit` write). The tables are never edited by hand.

    python -m scripts.docs_tables           # rewrite the stale files in place
    python -m scripts.docs_tables --check   # exit 1, naming each stale file, if any would change

Standard library only.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the start marker, everything up to the nearest end marker (lazily), and the end marker
BLOCK = re.compile(
    r"^(?P<start><!-- include: (?P<path>[^\s>]+) -->)[ \t]*\n"
    r"(?P<body>.*?)"
    r"^(?P<end><!-- /include -->)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
START = re.compile(r"^<!-- include: ", re.MULTILINE)


class IncludeError(ValueError):
    """A marker that names no file under bench/results, or a start marker without its end."""


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and docs/*.md, those that exist, in a stable order."""
    docs = sorted((root / "docs").glob("*.md")) if (root / "docs").is_dir() else []
    return [p for p in [root / "README.md", *docs] if p.is_file()]


def included(path_text: str, document: Path, root: Path = ROOT) -> str:
    """The content of the file a marker names: a .md under bench/results, relative to the root."""
    path = (root / path_text).resolve()
    results = (root / "bench" / "results").resolve()
    if path.parent != results or path.suffix != ".md":
        raise IncludeError(f"{document}: only bench/results/*.md is included, not {path_text!r}")
    if not path.is_file():
        raise IncludeError(f"{document}: {path_text} does not exist (run the bench that writes it)")
    return path.read_text(encoding="utf-8").strip("\n")


def render(text: str, document: Path, root: Path = ROOT) -> str:
    """`text` with every include block holding its file's current content."""
    blocks = list(BLOCK.finditer(text))
    if len(START.findall(text)) != len(blocks):
        raise IncludeError(f"{document}: an include marker has no matching <!-- /include -->")

    def fill(match: re.Match) -> str:
        content = included(match["path"], document, root)
        # blank lines around the content keep markdown tables apart from the comment lines
        return f"{match['start']}\n\n{content}\n\n{match['end']}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.docs_tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    try:
        for document in documents():
            text = document.read_text(encoding="utf-8")
            new = render(text, document.relative_to(ROOT))
            if new == text:
                continue
            stale.append(document.relative_to(ROOT))
            if not args.check:
                document.write_text(new, encoding="utf-8")
    except IncludeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for document in stale:
        verb = "is stale (run python -m scripts.docs_tables)" if args.check else "updated"
        print(f"{document} {verb}", file=sys.stderr if args.check else sys.stdout)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
