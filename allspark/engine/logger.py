"""Logging: rank 0 speaks, the other ranks only warn; TensorBoard scalars from rank 0 alone."""
import logging
import sys

__all__ = ["setup_logger", "TensorBoard", "AverageMeter", "format_iou_table"]


def setup_logger(rank=0, name="allspark"):
    """Configure the project logger: INFO to stdout on rank 0, WARNING and above on the others."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    fmt = "[%(asctime)s] %(message)s" if rank == 0 else f"[%(asctime)s rank {rank}] %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger


class TensorBoard:
    """SummaryWriter on rank 0, silent elsewhere."""

    def __init__(self, log_dir, enabled=True):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported only where it writes

            self.writer = SummaryWriter(str(log_dir))

    def scalar(self, tag, value, step):
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


class AverageMeter:
    """Running average of a scalar."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += value * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def format_iou_table(class_names, ious, miou, tag):
    """The release's evaluation lines: one per class, then the mean."""
    lines = [f"***** Evaluation {tag} ***** >>>> Class [{i} {name}] IoU: {iou:.2f}"
             for i, (name, iou) in enumerate(zip(class_names, ious))]
    lines.append(f"***** Evaluation {tag} ***** >>>> MeanIoU: {miou:.2f}")
    return "\n".join(lines)
