"""``autopoiesis adapters``: the registered adapters, their policy slots and objectives."""

from __future__ import annotations

from rich.text import Text

from .common import new_console


def cmd_adapters() -> int:
    from autopoiesis.online_view import titled_table

    from autopoiesis.adapters.base import AdapterError, load_adapter, registered

    console = new_console()
    found = registered()
    if not found:
        console.print("no adapters registered. Use --adapter module:Class or --adapter path/to/file.py, "
                      "or install a package with an 'autopoiesis.adapters' entry point.")
        return 0
    table = titled_table("registered adapters")
    for col in ("name", "source", "slots", "objectives"):
        table.add_column(col)
    for name, ep in sorted(found.items()):
        try:
            adapter = load_adapter(name)
            slots = "\n".join(slot.signature for slot in adapter.slots())
            objectives = ", ".join(str(o) for o in adapter.objectives)
        except AdapterError as e:
            try:  # an adapter that needs options (servers to attach to) still has class-level slots
                cls = ep.load()
                adapter = cls.__new__(cls)
                slots = "\n".join(slot.signature for slot in adapter.slots())
                objectives = ", ".join(str(o) for o in adapter.objectives)
            except Exception:  # noqa: BLE001
                slots, objectives = Text(str(e), style="red"), ""
        except Exception as e:  # a broken third-party adapter must not hide the others
            slots, objectives = Text(f"fails: {type(e).__name__}: {e}", style="red"), ""
        table.add_row(name, ep.value, slots, objectives)
    console.print(table)
    return 0
