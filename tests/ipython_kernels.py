"""A real IPython kernel (ipykernel through jupyter_client) for tests that need two notebooks' kernels
on one workspace at once."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from jupyter_client.manager import KernelManager


class Kernel:
    def __init__(self, km: KernelManager):
        self.km, self.kc = km, km.client()
        self.published: list[dict] = []  # every message the kernel published on iopub, in order

    def execute(self, code: str, timeout: float = 300) -> tuple[dict, str]:
        """Run ``code``; return (reply content, everything it printed)."""
        out: list[str] = []

        def hook(msg: dict) -> None:
            self.published.append(msg)
            c = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(c["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                out.append(c["data"].get("text/plain", "") + "\n")

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, store_history=False)
        return reply["content"], "".join(out)

    def run(self, code: str, timeout: float = 300) -> str:
        """Run ``code`` and return what it printed; fail with the kernel's traceback if it raised."""
        content, out = self.execute(code, timeout)
        assert content["status"] == "ok", f"{content.get('ename')}: {content.get('evalue')}\n" + "\n".join(
            content.get("traceback", [])
        )
        return out

    def drain(self, quiet: float = 2.0) -> None:
        """Collect what the kernel publishes after a cell ended (worker threads) until it is quiet."""
        import queue

        while True:
            try:
                self.published.append(self.kc.get_iopub_msg(timeout=quiet))
            except queue.Empty:
                return

    def eval(self, expr: str):
        """The value of a Python literal expression evaluated in the kernel. (Output of the kernel's
        worker threads, such as a progress bar, may land in the same cell: the value is fenced.)"""
        import ast
        import re

        out = self.run(f"print('<<value>>' + repr({expr}) + '<</value>>')")
        found = re.search(r"<<value>>(.*?)<</value>>", out, re.S)
        assert found, f"no value in the kernel's output: {out[-500:]!r}"
        return ast.literal_eval(found.group(1))


@contextlib.contextmanager
def kernel(workspace: Path) -> Iterator[Kernel]:
    """A fresh kernel of this Python whose default workspace is ``workspace`` (offline)."""
    env = {
        **os.environ,
        "MISTUDIO_HOME": str(workspace),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    k = Kernel(km)
    try:
        k.kc.start_channels()
        k.kc.wait_for_ready(timeout=120)
        yield k
    finally:
        k.kc.stop_channels()
        km.shutdown_kernel(now=True)
