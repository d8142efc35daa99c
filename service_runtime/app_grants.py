"""The app role's privileges, statement by statement: an allow-list kept next to each migrations
directory (`app_role_grants.txt`), applied exactly at the end of every migration run.

File format, one relation (table or sequence) per line:

    # comment
    idempotency_keys    SELECT, INSERT
    accounts            SELECT, INSERT, UPDATE(tenant_id)     # a column privilege
    schema_migrations   -                                     # nothing at all

Every table and sequence of the database must have a line in one of the files applied to it (a
new table without one fails the migration run), and the role gets what the lines say and nothing
else: `apply_grants` revokes everything first, in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

GRANTS_FILE = "app_role_grants.txt"
PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "USAGE"})
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_PRIVILEGES = re.compile(r"^(SELECT|INSERT|UPDATE|DELETE|USAGE)(?:\(([a-z0-9_, ]+)\))?(?:,\s*|$)")


@dataclass(frozen=True, order=True)
class Grant:
    relation: str
    privilege: str
    column: str = ""  # a column privilege when set

    def __str__(self) -> str:
        return f"{self.relation} {self.privilege}" + (f"({self.column})" if self.column else "")


def parse_grants(text: str, source: str = GRANTS_FILE) -> dict[str, frozenset[Grant]]:
    """relation -> its grants (empty for a `-` line); ValueError naming the line otherwise."""
    found: dict[str, frozenset[Grant]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        relation, _, rest = line.partition(" ")
        rest = rest.strip()
        if not _NAME.match(relation) or not rest:
            raise ValueError(f"{source}:{number}: expected '<relation> <privileges>' or '<relation> -'")
        if relation in found:
            raise ValueError(f"{source}:{number}: {relation} listed twice")
        found[relation] = frozenset() if rest == "-" else _privileges(relation, rest, f"{source}:{number}")
    return found


def _privileges(relation: str, text: str, where: str) -> frozenset[Grant]:
    """`SELECT, INSERT, UPDATE(a, b)` -> one Grant per privilege (per column for a column list)."""
    grants: set[Grant] = set()
    while text:
        m = _PRIVILEGES.match(text)
        if not m:
            raise ValueError(f"{where}: unknown privilege at {text!r}")
        columns = [c.strip() for c in (m.group(2) or "").split(",") if c.strip()]
        if m.group(2) is not None and (not columns or not all(_NAME.match(c) for c in columns)):
            raise ValueError(f"{where}: bad column list in {m.group(0)!r}")
        grants.update(Grant(relation, m.group(1), c) for c in columns or [""])
        text = text[m.end():]
    return frozenset(grants)


def read_grants(dirs: Iterable[Path]) -> dict[str, frozenset[Grant]]:
    """The allow-lists of `dirs` (those that have one), merged; a relation in two files is an error."""
    merged: dict[str, frozenset[Grant]] = {}
    for d in dirs:
        path = Path(d) / GRANTS_FILE
        if not path.exists():
            continue
        for relation, grants in parse_grants(path.read_text(), str(path)).items():
            if relation in merged:
                raise ValueError(f"{path}: {relation} is already listed by another {GRANTS_FILE}")
            merged[relation] = grants
    return merged


_RELATIONS = """
SELECT c.relname, c.relkind FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
ORDER BY c.relname
"""


def grant_statements(role: str, relations: dict[str, str], allowed: dict[str, frozenset[Grant]]) -> list[str]:
    """REVOKE everything, then GRANT exactly `allowed`; `relations` maps each relation to its relkind."""
    missing = sorted(set(relations) - set(allowed))
    if missing:
        raise RuntimeError(f"no line in any {GRANTS_FILE} for {', '.join(missing)}: say what the app role "
                           f"{role} may do with it ('-' for nothing)")
    statements = [f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
                  f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"]
    for relation in sorted(relations):
        kind = "SEQUENCE" if relations[relation] == "S" else "TABLE"
        for g in sorted(allowed[relation]):
            target = f"({g.column})" if g.column else ""
            statements.append(f"GRANT {g.privilege}{target} ON {kind} {relation} TO {role}")
    return statements


async def apply_grants(conn: asyncpg.Connection, role: str, dirs: Iterable[Path]) -> None:
    """Gives `role` exactly the privileges of the allow-lists in `dirs` on this database (one transaction)."""
    if not _NAME.match(role):
        raise ValueError(f"unsafe role name {role!r}")
    allowed = read_grants(dirs)
    async with conn.transaction():
        relations = {r["relname"]: r["relkind"] for r in await conn.fetch(_RELATIONS)}
        for statement in grant_statements(role, relations, allowed):
            await conn.execute(statement)
