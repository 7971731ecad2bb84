"""Segmentation metrics, counted on the device."""
import torch

__all__ = ["intersection_and_union", "mean_iou"]


def intersection_and_union(pred, target, num_classes, ignore_index=255):
    """Per-class pixel counts of one prediction, as the release's ``intersectionAndUnion``:
    pred, target: integer tensors of the same shape; pixels where target == ignore_index do not count.
    Returns (intersection, union, target area), each (num_classes,) int64 on pred's device."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1), target.reshape(-1).to(pred.device)
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    area_inter = torch.bincount(pred[pred == target], minlength=num_classes)[:num_classes]
    area_pred = torch.bincount(pred, minlength=num_classes)[:num_classes]
    area_target = torch.bincount(target, minlength=num_classes)[:num_classes]
    return area_inter, area_pred + area_target - area_inter, area_target


def mean_iou(intersection, union):
    """Per-class IoU in percent and their mean, as the release computes them (absent classes count as 0)."""
    iou = intersection.double() / (union.double() + 1e-10) * 100.0
    return iou.mean().item(), iou.tolist()
