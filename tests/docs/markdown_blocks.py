"""Code blocks of the project's Markdown files, with the directive that says how CI runs each.

Every ``bash``/``sh``/``python`` fence in a documented file must be preceded, on the line just
above it, by one HTML comment (invisible on GitHub):

- ``<!-- docs-test: mace -->`` / ``<!-- docs-test: nequip -->``: run in that framework's
  environment, in the folder shared by the blocks of that environment;
- ``<!-- docs-test: mace | OLD => NEW | ... -->``: the same after replacing the literal text OLD
  by NEW (fewer epochs and steps); each OLD must occur in the block;
- ``<!-- docs-test: nequip, needs=plain-nequip -->``: first make a prerequisite the block assumes
  the user has (see ``PREREQUISITES`` in ``test_readme_commands.py``);
- ``<!-- docs-test: skip: REASON -->``: not run, for the REASON given (installing packages,
  clusters, GPUs, the test suite itself).

Fences of other languages (``text``, none) are documentation only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the documents whose blocks CI runs, in the order their blocks run (later ones may use the
#: files earlier ones made, as a reader who follows the README first would have them)
DOCUMENTS = ("README.md", "eip_plugins/mace/README.md", "eip_plugins/nequip/README.md")
ENVIRONMENTS = ("mace", "nequip")
EXECUTABLE = {"bash": "bash", "sh": "bash", "console": None, "python": "python"}

_FENCE = re.compile(r"^```([\w-]*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


class DirectiveError(ValueError):
    """A block without a directive, or a directive that cannot be read."""


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: ``document:line`` (1-based line of the opening fence)."""

    document: str
    line: int
    language: str
    code: str
    environment: str | None  # None: skipped
    skip_reason: str | None
    needs: tuple[str, ...]
    substitutions: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"

    def runnable_code(self) -> str:
        """The block as CI runs it: each ``OLD => NEW`` substitution applied."""
        code = self.code
        for old, new in self.substitutions:
            if old not in code:
                raise DirectiveError(f"{self.name}: the substitution {old!r} is not in the block")
            code = code.replace(old, new)
        return code


def _parse_directive(text: str, where: str) -> tuple:
    if text.startswith("skip:"):
        reason = text[len("skip:") :].strip()
        if not reason:
            raise DirectiveError(f"{where}: 'skip:' needs a reason")
        return None, reason, (), ()
    head, *subs = [part.strip() for part in text.split("|")]
    environment, *options = [part.strip() for part in head.split(",")]
    if environment not in ENVIRONMENTS:
        raise DirectiveError(f"{where}: environment {environment!r} is not one of {ENVIRONMENTS}")
    needs = []
    for option in options:
        key, _, value = option.partition("=")
        if key != "needs" or not value:
            raise DirectiveError(f"{where}: unknown option {option!r} (only needs=NAME)")
        needs.extend(value.split("+"))
    substitutions = []
    for sub in subs:
        old, arrow, new = sub.partition("=>")
        if not arrow or not old.strip():
            raise DirectiveError(f"{where}: substitution {sub!r} is not 'OLD => NEW'")
        substitutions.append((old.strip(), new.strip()))
    return environment, None, tuple(needs), tuple(substitutions)


def read_blocks(document: str) -> list[CodeBlock]:
    """Every executable fence of ``document`` (relative to the repository), in order."""
    lines = (REPO / document).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise DirectiveError(f"{document}:{start + 1}: unclosed code fence")
        i = end + 1
        if language not in EXECUTABLE:
            continue
        where = f"{document}:{start + 1}"
        directive = _DIRECTIVE.match(lines[start - 1]) if start else None
        if not directive:
            raise DirectiveError(
                f"{where}: a {language} block without a '<!-- docs-test: ... -->' line above it"
            )
        if EXECUTABLE[language] is None:
            raise DirectiveError(f"{where}: {language} blocks cannot run; use bash")
        environment, reason, needs, subs = _parse_directive(directive.group(1), where)
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(
            CodeBlock(document, start + 1, language, code, environment, reason, needs, subs)
        )
    return blocks


def all_blocks() -> list[CodeBlock]:
    return [block for document in DOCUMENTS for block in read_blocks(document)]
