"""A demo corpus every machine has: Python's own documentation.

Documents come from `pydoc_data.topics` (the language reference topics `help()` shows) and from
the docstrings of standard-library modules and their public top-level classes and functions.
Modules are read with `ast` from their source files, never imported: importing some of them
has side effects (`antigravity` opens a browser, `this` prints).
"""

from __future__ import annotations

import ast
import json
import logging
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from neuralir.index.corpus import CorpusDoc

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
TOPICS_MODULE = "pydoc_data.topics"
MAX_TEXT_CHARS = 1500
# Packages that are tests, tools or GUIs rather than library documentation.
EXCLUDED_PACKAGES = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "tkinter",
        "ensurepip",
        "turtledemo",
        "site-packages",
        "dist-packages",
        "pydoc_data",
        # Deprecated (removed in 3.12) and generated codec tables: noise in a search demo.
        "distutils",
        "encodings",
        "__pycache__",
    }
)
_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def build_demo_corpus(out_dir: Path, modules: Sequence[str] | None = None) -> Path:
    """Writes `out_dir/corpus.jsonl` (BEIR layout) and returns its path.

    `modules` restricts the corpus to those modules and their submodules (quick tests); the
    pydoc topics are then included only if "pydoc_data.topics" is listed. The output depends
    only on the running Python's standard library, so it is the same on every run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CORPUS_FILE
    tmp = path.with_name(f"{CORPUS_FILE}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for doc in iter_demo_docs(modules):
            record = {"_id": doc.doc_id, "title": doc.title, "text": doc.text}
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    tmp.replace(path)
    logger.info("wrote %d demo documents to %s", count, path)
    return path


def iter_demo_docs(modules: Sequence[str] | None = None) -> Iterator[CorpusDoc]:
    """The demo documents in a fixed order: topics first, then modules by name; ids unique."""
    wanted = None if modules is None else set(modules)
    seen: set[str] = set()
    sources = []
    if wanted is None or TOPICS_MODULE in wanted:
        sources.append(_topic_docs())
    sources.extend(_module_docs(name, path) for name, path in _stdlib_modules(wanted))
    for source in sources:
        for doc in source:
            if doc.doc_id not in seen:
                seen.add(doc.doc_id)
                yield doc


def _topic_docs() -> Iterator[CorpusDoc]:
    # A plain dict of strings: importing it runs nothing else.
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            doc_id = f"{TOPICS_MODULE}.{key}"
            yield CorpusDoc(doc_id, _title(f"Python reference: {key}", text), _cap(text))


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_modules(wanted: set[str] | None) -> list[tuple[str, Path]]:
    """(qualified module name, source file) for public stdlib modules, sorted by name."""
    found = list(_walk(stdlib_dir(), ""))
    if wanted is not None:
        found = [
            (name, path)
            for name, path in found
            if name in wanted or any(name.startswith(f"{w}.") for w in wanted)
        ]
    return sorted(found)


def _walk(directory: Path, package: str) -> Iterator[tuple[str, Path]]:
    for entry in sorted(directory.iterdir()):
        name = entry.stem if entry.is_file() else entry.name
        if name.startswith("_") or name in EXCLUDED_PACKAGES or not name.isidentifier():
            continue
        qualified = f"{package}{name}"
        if entry.is_file() and entry.suffix == ".py":
            yield qualified, entry
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            yield qualified, entry / "__init__.py"
            yield from _walk(entry, f"{qualified}.")


def _module_docs(module: str, path: Path) -> Iterator[CorpusDoc]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        logger.warning("skipping %s: %s", path, exc)
        return
    docstring = ast.get_docstring(tree)
    if docstring:
        yield CorpusDoc(module, _title(module, docstring), _cap(docstring))
    exported = _literal_all(tree)
    for node in _top_level_definitions(tree):
        # Private names stay out even when `__all__` exports them (asyncio.events does).
        listed = exported is None or node.name in exported
        if listed and not node.name.startswith("_"):
            yield from _definition_docs(f"{module}.{node.name}", node)


def _definition_docs(qualified: str, node: ast.ClassDef | ast.FunctionDef) -> Iterator[CorpusDoc]:
    """A class or function's docstring, and for a class those of its public methods."""
    docstring = ast.get_docstring(node)
    if docstring:
        yield CorpusDoc(qualified, _title(qualified, docstring), _cap(docstring))
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                method_doc = ast.get_docstring(child)
                if method_doc and not child.name.startswith("_"):
                    name = f"{qualified}.{child.name}"
                    yield CorpusDoc(name, _title(name, method_doc), _cap(method_doc))


def _top_level_definitions(tree: ast.Module) -> Iterator[ast.ClassDef | ast.FunctionDef]:
    """Module-level classes and functions, including those defined under a top-level `if` or
    `try` (platform-specific definitions are common in the stdlib)."""
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            yield node  # type: ignore[misc]
        elif isinstance(node, ast.If | ast.Try):
            for block in _blocks(node):
                yield from (n for n in block if isinstance(n, _DEFINITIONS))  # type: ignore[misc]


def _blocks(node: ast.If | ast.Try) -> list[list[ast.stmt]]:
    if isinstance(node, ast.If):
        return [node.body, node.orelse]
    handlers = [handler.body for handler in node.handlers]
    return [node.body, *handlers, node.orelse, node.finalbody]


def _literal_all(tree: ast.Module) -> set[str] | None:
    """The names in a literal `__all__ = [...]`, or None if there is none or it is changed
    later (os, for one, extends a literal list per platform)."""
    mentions = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "__all__"]
    if len(mentions) != 1:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and mentions[0] in node.targets:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return set(value)
    return None


def _title(name: str, docstring: str) -> str:
    first_line = docstring.strip().splitlines()[0].strip()
    return f"{name}: {first_line}" if first_line else name


def _cap(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Cuts at the last space before `limit`, so no word is broken."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip()
