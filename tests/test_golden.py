"""The model against tensors produced by the official release (../shared/golden/allspark_ref_small.pt).

`python -m pytest tests/test_golden.py -rP` also prints every measured error.

Tolerances are the ones the release itself meets against the file on CPU float32: logits, losses
and buffers to 1e-5 absolute, gradients to 1e-4 relative (max |ours - ref| / max |ref|)."""
import pytest
import torch
import torch.nn.functional as F


from helpers import golden_allspark_model, golden_allspark_model_cfg, golden_file, training_config

ATOL = 1e-5
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def golden_file_contents():
    return torch.load(golden_file("allspark_ref_small.pt"), weights_only=False)


@pytest.fixture(scope="module", params=["exact", "fused"])
def golden(request, golden_file_contents):
    """The reference, with the attention path the model is built with: every test runs for both."""
    return {**golden_file_contents, "attention": request.param}


def golden_model(golden):
    return golden_allspark_model(golden, golden["attention"])


def assert_close(ours, ref, name):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    print(f"{name}: max abs error {err:.3g}")  # shown with `pytest -rP`
    assert err <= ATOL, f"{name}: max abs error {err:.3g} > {ATOL}"


def test_eval_logits_single_and_batched(golden):
    model = golden_model(golden).eval()
    with torch.no_grad():
        assert_close(model(golden["x_u"][:1]), golden["eval_logits_0"], "eval_logits_0")
        # In eval mode the bottleneck attends across the batch, so the batched result differs from
        # running the images one by one; the reference encodes that.
        assert_close(model(golden["x_u"]), golden["eval_logits_batch"], "eval_logits_batch")


@pytest.fixture(scope="module", params=["warmup", "smem"])
def train_step(request, golden):
    tag = request.param
    model = golden_model(golden).eval()
    with torch.no_grad():
        pseudo = model(golden["x_u"])
    model.train()
    logits = model(torch.cat([golden["x_l"], golden["x_u"]]), pseudo_logits=pseudo, use_memory=tag == "smem")
    bs = golden["case"]["bs"]
    loss = (F.cross_entropy(logits[:bs], golden["y_l"], ignore_index=255)
            + F.cross_entropy(logits[bs:], pseudo.argmax(1))) / 2
    loss.backward()
    return tag, model, pseudo, logits.detach(), loss.detach()


def test_pseudo_logits(train_step, golden):
    tag, _, pseudo, _, _ = train_step
    assert_close(pseudo, golden[f"{tag}_pseudo_logits"], f"{tag}_pseudo_logits")


def test_train_logits_and_loss(train_step, golden):
    tag, _, _, logits, loss = train_step
    assert_close(logits, golden[f"{tag}_train_logits"], f"{tag}_train_logits")
    assert_close(loss, golden[f"{tag}_loss"], f"{tag}_loss")


def test_semantic_memory_queue_and_pointer(train_step, golden):
    tag, model, _, _, _ = train_step
    attn = model.decoder.allspark.attn
    assert torch.equal(attn.queue_ptr, golden[f"{tag}_queue_ptr"])
    assert_close(attn.kv_queue, golden[f"{tag}_kv_queue"], f"{tag}_kv_queue")
    # The update must have moved the queue away from its initial noise.
    assert not torch.allclose(attn.kv_queue, golden["state_dict"]["decoder.allspark.attn.kv_queue"])


def test_gradients(train_step, golden):
    tag, model, _, _, _ = train_step
    params = dict(model.named_parameters())
    assert golden[f"{tag}_grads"], "the file holds gradients to compare"
    for name, ref in golden[f"{tag}_grads"].items():
        grad = params[name].grad
        assert grad is not None, f"{name}: no gradient"
        rel = ((grad.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
        print(f"{tag} grad {name}: relative error {rel:.3g}")
        assert rel <= GRAD_RTOL, f"{tag} grad {name}: relative error {rel:.3g} > {GRAD_RTOL}"


def test_buffers_after_step(train_step, golden):
    tag, model, _, _, _ = train_step
    buffers = dict(model.named_buffers())
    for name, ref in golden[f"{tag}_buffers_after"].items():
        if ref.is_floating_point():
            assert_close(buffers[name], ref, f"{tag} {name}")
        else:
            assert torch.equal(buffers[name], ref), f"{tag} {name}: {buffers[name]} vs {ref}"


@pytest.mark.parametrize("tag, epoch", [("warmup", 0), ("smem", 1)])
def test_the_trainer_step_of_the_allspark_method_reproduces_the_release(golden, tag, epoch):
    """The same step through the trainer (:meth:`Trainer.step`) and the ``allspark`` method (pseudo-label
    pass, training forward with S-Mem from warmup_epoch 1 on, loss, backward): the release's loss,
    gradients and buffers. (The SGD step it also takes does not touch the gradients.)"""
    from allspark.engine.trainer import Trainer

    c = golden["case"]
    cfg = training_config(model=golden_allspark_model_cfg(c, golden["attention"]), nclass=c["ncls"], crop_size=c["crop"], lr=0.001)
    batch = ((golden["x_l"], golden["y_l"]),
             {"img_w": golden["x_u"], "padded": torch.zeros_like(golden["y_l"], dtype=torch.bool)})
    trainer = Trainer(cfg, model=golden_model(golden), loaders={"l": [batch], "u": [batch], "val": []})
    values = trainer.step(batch, epoch, 0)
    assert_close(values[0], golden[f"{tag}_loss"], f"method {tag}_loss")
    params = dict(trainer.model.named_parameters())
    for name, ref in golden[f"{tag}_grads"].items():
        rel = ((params[name].grad.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
        assert rel <= GRAD_RTOL, f"method {tag} grad {name}: relative error {rel:.3g}"
    buffers = dict(trainer.model.named_buffers())
    for name, ref in golden[f"{tag}_buffers_after"].items():
        if ref.is_floating_point():
            assert_close(buffers[name], ref, f"method {tag} {name}")
        else:
            assert torch.equal(buffers[name], ref), name
