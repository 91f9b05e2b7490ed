"""The live epoch bar of ``weldray train`` / ``cv``: rank 0 of the Ray Train workers puts each finished epoch's
figures on a Ray queue, and the driver draws them (epochs done / total, loss, images/s, ETA).

Workers' own output stays in Ray's logs (:mod:`weldray.logs`), so without this the console would show
nothing for the minutes a training runs. The queue is a small Ray actor, so the bar works the same whether
the workers run on this machine or on other nodes of a cluster.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


def describe_training(m: dict[str, Any]) -> str:
    info = f"@{m['image_size']}px loss {m['train_loss']:.3f} {m['images_per_s']:.1f} img/s"
    return info + (f" val bal. acc. {m['val_bal_acc']:.3f}" if "val_bal_acc" in m else "")


@contextlib.contextmanager
def epoch_progress(
    title: str, epochs: int, *, enabled: bool = True, describe: Callable[[dict[str, Any]], str] = describe_training
) -> Iterator[Any]:
    """Yields the queue for the training loop (``None`` when disabled) and draws its epochs (each epoch's metrics
    dict, with ``epoch`` counted from 0, as ``describe`` puts it) until the block ends."""
    if not enabled:
        yield None
        return
    from ray.util.queue import Empty, Queue
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()
    with Progress(
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs {task.fields[info]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(title, total=epochs, info="")

        def draw() -> None:
            while not stop.is_set():
                try:
                    m = queue.get(timeout=0.5)
                except Empty:
                    continue
                except Exception:  # the queue actor is gone (Ray shut down): nothing more to draw
                    return
                bar.update(task, completed=m["epoch"] + 1, info=describe(m))

        thread = threading.Thread(target=draw, name="epoch-progress", daemon=True)
        thread.start()
        try:
            yield queue
        finally:
            stop.set()
            thread.join(timeout=5)
            with contextlib.suppress(Exception):
                queue.shutdown(force=True)
