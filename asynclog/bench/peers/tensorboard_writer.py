"""(c) TensorBoard's ``SummaryWriter`` (torch.utils.tensorboard).

Events: one ``add_scalar`` per numeric field, the record's ``step`` as global step; the string field has no
scalar to go to and is left out. Tensors: ``add_histogram``, which is what TensorBoard offers and keeps a
histogram, not the values (lossy). A token stream has no TensorBoard counterpart: n/a.
"""

from __future__ import annotations

from asynclog.bench.peers._base import Adapter


class TensorBoard(Adapter):
    name = "TensorBoard"
    requires = ("tensorboard", "torch")
    how = {"events": "add_scalar per numeric field", "tensors": "add_histogram (lossy)"}
    not_applicable = {"tokens": "no per-token stream in TensorBoard"}

    def open(self, directory: str, workload: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=directory)
        self.step = 0

    def event(self, name: str, fields: dict) -> None:
        step = fields["step"]
        for key, value in fields.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{name}/{key}", value, global_step=step)

    def tensor(self, name: str, tensor) -> None:
        self.writer.add_histogram(name, tensor, global_step=self.step)
        self.step += 1

    def close(self) -> None:
        self.writer.close()
