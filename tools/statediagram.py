"""Print the SMTP server's state machine (vsmtp.smtp.states.TRANSITIONS) as a Mermaid diagram.

    .venv/bin/python tools/statediagram.py > /tmp/states.md

docs/architecture.md embeds its output; tests/test_docs.py checks the two agree.
"""

from __future__ import annotations

from vsmtp.smtp.states import TRANSITIONS, State

# Moves decided by the reply's code rather than by the table (ServerConnection.send).
LABELS = {"Auth": "Auth (334)"}
EXTRA = {State.AUTH: [f"    {State.AUTH.name} --> {State.READY.name}: AuthResponse (235, or a failure)"]}


def mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {State.GREETED.name}: 220 greeting"]
    for state, row in TRANSITIONS.items():
        for event, (on_success, _) in row.items():
            if on_success is state:
                continue  # commands that leave the state alone would only clutter the picture
            lines.append(f"    {state.name} --> {on_success.name}: {LABELS.get(event.__name__, event.__name__)}")
        lines += EXTRA.get(state, [])
    lines.append(f"    {State.CLOSED.name} --> [*]")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(mermaid(), end="")
