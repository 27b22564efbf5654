#!/usr/bin/env python3
"""Fails when docs/architecture.md does not name a source file.

The code map in docs/architecture.md has one section per crate, headed
"### `crates/<name>`" (or "### `chaos-tests`"). Every `.rs` file under that crate's
`src/` must be named in its section, by its path below `src/` (`store/log.rs`) or by its
file name when that is unambiguous in the crate (`log.rs`); a `mod.rs` is named by its
folder (`store/`). `lib.rs` is the crate itself and needs no mention.

It also fails on an import circle between the top-level modules of any crate (a module
is `src/<name>.rs` or the folder `src/<name>/`; it depends on every module it names as
`crate::<module>`, through `super::` paths that reach the crate root, or through an item
the crate root re-exports from it (`pub use state::GroupState` makes `crate::GroupState`
name `state`), outside comments, strings and its `#[cfg(test)]` part), so each crate's
modules depend one way. KNOWN_CIRCLES lists the circles not yet broken; a new one fails.

And it fails when a crate depends on a workspace crate FORBIDDEN_DEPS rules out (the
controller on the client library, the core on any, failover-net on any but the wire types).

    python3 scripts/check-architecture.py
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def crate_dirs():
    """(section title, crate dir) for every crate of the workspace."""
    out = []
    crates = os.path.join(ROOT, "crates")
    for name in sorted(os.listdir(crates)):
        if os.path.isdir(os.path.join(crates, name, "src")):
            out.append((f"crates/{name}", os.path.join(crates, name)))
    if os.path.isdir(os.path.join(ROOT, "chaos-tests", "src")):
        out.append(("chaos-tests", os.path.join(ROOT, "chaos-tests")))
    return out


def sections(text):
    """Section title → body, for every "### `title`" heading."""
    found = {}
    parts = re.split(r"^### `([^`]+)`[^\n]*$", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        found[parts[i]] = parts[i + 1].split("\n## ", 1)[0]
    return found


def names_for(rel, all_rels):
    """The spellings that count as naming `rel` (a path below src/)."""
    if os.path.basename(rel) == "mod.rs":
        folder = os.path.dirname(rel)
        return [folder + "/", folder + "/mod.rs"]
    base = os.path.basename(rel)
    spellings = [rel]
    if sum(1 for r in all_rels if os.path.basename(r) == base) == 1:
        spellings.append(base)
    return spellings


# Circles between top-level modules not yet broken: crate title -> circles (sorted module
# names). docs/architecture.md says why each remains. Remove an entry once its circle is
# gone; a circle not listed here fails the check.
KNOWN_CIRCLES = {}

IDENT = r"[A-Za-z_]\w*"


def code_of(path):
    """A file's text without comments, strings and its `#[cfg(test)]` part."""
    with open(path, encoding="utf-8") as f:
        text = f.read().split("\n#[cfg(test)]", 1)[0]
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def brace_items(code, start):
    """The items of the `{...}` group opening at `start`, split at its top-level commas."""
    depth, item, items = 0, "", []
    for ch in code[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if ch == "," and depth == 1:
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    return [i.strip() for i in items if i.strip()]


def root_names(code):
    """The first path segment of every item named from the crate root (`crate::x`,
    `crate::{x, y::z}`), with the `super::` paths resolved by the caller."""
    return first_segments(r"\bcrate::(\{|" + IDENT + ")", code)


def first_segments(pattern, code):
    """The identifier `pattern`'s group 1 matched, or every item of the `{..}` list it
    opened."""
    names = []
    for m in re.finditer(pattern, code):
        if m.group(1) == "{":
            names += [re.match(IDENT, i).group(0) for i in brace_items(code, m.start(1))
                      if re.match(IDENT, i)]
        else:
            names.append(m.group(1))
    return names


def super_root_names(code, depth):
    """Items a file `depth` modules below the root names through `super::` paths that
    reach the root (`super::x` in `src/a.rs`, `super::super::x` in `src/a/b.rs`)."""
    prefix = r"\b" + r"super::" * depth + r"(?!super\b)(\{|" + IDENT + ")"
    return first_segments(prefix, code)


def reexports(code, modules):
    """Names the crate root re-exports from its modules (`pub use state::{A, B as C}`):
    name -> module, so that `crate::A` counts as naming `state`."""
    found = {}
    for m in re.finditer(r"\bpub use (" + IDENT + r")::([^;]+);", code):
        module = m.group(1)
        if module not in modules:
            continue
        for item in re.split(r"[{},]", m.group(2)):
            item = item.strip()
            if not item:
                continue
            name = item.split(" as ")[-1].split("::")[-1].strip()
            if name and name != "*":
                found[name] = module
    return found


def crate_imports(src):
    """Top-level module of one crate -> the top-level modules it names (a module is
    `src/<name>.rs` or the folder `src/<name>/`; `main.rs` counts as a module)."""
    files = []
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                files.append(os.path.relpath(os.path.join(dirpath, name), src))
    modules = {f.split(os.sep)[0].removesuffix(".rs") for f in files} - {"lib"}
    root = "lib.rs" if "lib.rs" in files else "main.rs"
    aliases = reexports(code_of(os.path.join(src, root)), modules) if root in files else {}
    deps = {}
    for rel in files:
        parts = rel.removesuffix(".rs").split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        module = parts[0]
        if module == "lib":
            continue
        code = code_of(os.path.join(src, rel))
        named = root_names(code) + (super_root_names(code, len(parts)) if rel != root else [])
        targets = {n if n in modules else aliases.get(n) for n in named}
        deps.setdefault(module, set()).update(t for t in targets if t and t != module)
    return deps


def circles(deps):
    """Every group of modules that import each other in a circle (sorted names)."""
    reach = {}
    for start in deps:
        seen, todo = set(), list(deps[start])
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo.extend(deps.get(m, ()))
        reach[start] = seen
    found = set()
    for m in deps:
        if m in reach[m]:
            found.add(tuple(sorted(n for n in deps if n in reach[m] and m in reach[n])))
    return found


# Workspace crates a crate must not depend on (its [dependencies] in Cargo.toml). The core
# stands alone; failover-net speaks only the wire types (the pinned channel every generated
# client runs on lives with them in failover-proto); the controller reaches its peers
# through failover-net and the generated clients, not through the client library.
FORBIDDEN_DEPS = {
    "crates/failover-core": "any",
    "crates/failover-net": {
        "failover-client", "failover-controller", "failover-executor", "failover-cli",
        "failover-sim", "failover-bench",
    },
    "crates/failover-controller": {"failover-client"},
}


def workspace_deps(path):
    """The workspace crates named in a crate's [dependencies] section."""
    with open(os.path.join(path, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^\[dependencies\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    if not section:
        return set()
    return set(re.findall(r"^(failover-[\w-]+|chaos-tests)\b", section.group(1), flags=re.M))


def main():
    with open(DOC, encoding="utf-8") as f:
        doc = sections(f.read())
    missing = []
    for title, path in crate_dirs():
        src = os.path.join(path, "src")
        rels = []
        for dirpath, _, files in os.walk(src):
            for name in files:
                if name.endswith(".rs"):
                    rels.append(os.path.relpath(os.path.join(dirpath, name), src))
        body = doc.get(title)
        if body is None:
            missing.append(f"{title}: no section \"### `{title}`\" in docs/architecture.md")
            continue
        for rel in sorted(rels):
            if rel == "lib.rs":
                continue
            if not any(re.search(r"(?<![\w/])" + re.escape(s) + r"(?![\w])", body)
                       for s in names_for(rel, rels)):
                missing.append(f"{title}/src/{rel}: not named in its section of docs/architecture.md")
    for title, path in crate_dirs():
        forbidden = FORBIDDEN_DEPS.get(title, set())
        for dep in sorted(workspace_deps(path)):
            if forbidden == "any" or dep in forbidden:
                missing.append(f"{title}: must not depend on {dep} (docs/architecture.md, Code map)")
    for title, path in crate_dirs():
        known = KNOWN_CIRCLES.get(title, set())
        for circle in sorted(circles(crate_imports(os.path.join(path, "src"))) - known):
            missing.append(f"{title}: modules import each other in a circle: "
                           + " <-> ".join(circle))
    if missing:
        print("\n".join(missing))
        sys.exit(f"{len(missing)} problem(s): source files missing from docs/architecture.md, "
                 "import circles or forbidden dependencies")
    print("docs/architecture.md names every source file")


if __name__ == "__main__":
    main()
