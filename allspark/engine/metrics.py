"""Segmentation metrics, counted on the device."""
import torch

from ..config import IGNORE_INDEX

__all__ = ["intersection_and_union", "mean_iou"]


def intersection_and_union(pred, target, num_classes, ignore_index=IGNORE_INDEX):
    """Per-class pixel counts of one prediction, as the release's ``intersectionAndUnion``:
    pred, target: integer tensors of the same shape; pixels where target == ignore_index do not count, and
    a target value outside [0, num_classes) counts its pixel's prediction only (as the release's histograms).
    Returns (intersection, union, target area), each (num_classes,) int64 on pred's device.

    One fixed-size ``scatter_add_`` of the joint (target, prediction) index: no boolean indexing or
    ``bincount``, whose output sizes depend on the data, so nothing waits for the host on a GPU."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    K = num_classes
    pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device).long()
    in_range = (target >= 0) & (target < K)
    # bins: K * K joint (target, pred) counts; K more for predictions whose target is out of range; one for
    # ignored pixels
    index = torch.where(in_range, target * K + pred, K * K + pred)
    index = torch.where(target == ignore_index, K * K + K, index)
    counts = torch.zeros(K * K + K + 1, dtype=torch.long, device=pred.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    joint = counts[:K * K].view(K, K)  # rows: target, columns: prediction
    area_inter = joint.diagonal()
    area_pred = joint.sum(0) + counts[K * K:K * K + K]
    area_target = joint.sum(1)
    return area_inter, area_pred + area_target - area_inter, area_target


def mean_iou(intersection, union):
    """Per-class IoU in percent and their mean, as the release computes them (absent classes count as 0)."""
    iou = intersection.double() / (union.double() + 1e-10) * 100.0
    return iou.mean().item(), iou.tolist()
