"""Shared by the benchmark scripts: writing one section of docs/benchmarks.md (between its
markers, keeping the others), and polling with a deadline."""
import pathlib
import time

HEADER = "# Benchmarks\n\nReproduce everything with `make bench`. Each section names its own command.\n"


def write_section(name: str, body: str) -> None:
    path = pathlib.Path("docs/benchmarks.md")
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)


def wait_for(check, timeout, interval=0.005):
    """Polls `check` until it returns something truthy, which it returns; raises
    TimeoutError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s")
