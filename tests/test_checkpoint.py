"""Checkpoints: round trip with prototypes, model-zoo .pkl teachers/students, atomic saves."""
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import distill_cfg, fill_prototypes_from_batch, make_batch, tiny_cfg

from gkd_d2 import DistillationCheckpointer


def eval_outputs(model, batch):
    model.eval()
    with torch.no_grad():
        return [x["instances"] for x in model(batch)]


def test_round_trip_restores_student_adapters_and_prototypes(rcnn_teacher, tmp_path):
    cfg = distill_cfg(rcnn_teacher)
    torch.manual_seed(0)
    model = build_model(cfg)
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    # one optimiser step so the weights differ from a fresh build
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    with EventStorage(0):
        sum(model(make_batch(((2, 0),))).values()).backward()
    opt.step()
    DistillationCheckpointer(model, save_dir=str(tmp_path)).save("model_x")

    torch.manual_seed(123)
    fresh = build_model(cfg)
    assert fresh.prototypes.is_empty()
    DistillationCheckpointer(fresh).load(str(tmp_path / "model_x.pth"))
    a, b = model.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(fresh.prototypes.last_refresh_iter) == 0 and not fresh.prototypes.is_empty()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch(((1, 0),))]
    for x, y in zip(eval_outputs(model, batch), eval_outputs(fresh, batch)):
        assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.equal(x.scores, y.scores)


def write_model_zoo_pkl(model, path):
    """The model zoo's layout: {"model": {name: numpy array}, "__author__": ...}."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def test_teacher_from_model_zoo_pkl(rcnn_teacher, tmp_path):
    reference = build_model(distill_cfg(rcnn_teacher)).teacher
    pkl = write_model_zoo_pkl(reference, tmp_path / "model_final_abc.pkl")
    model = build_model(distill_cfg((rcnn_teacher[0], pkl)))
    ref = reference.state_dict()
    got = model.teacher.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_plain_detector_checkpoint_loads_into_student_only(rcnn_teacher, tmp_path):
    cfg = distill_cfg(rcnn_teacher)
    torch.manual_seed(7)
    plain = build_model(tiny_cfg())  # a plain student-sized GeneralizedRCNN
    pkl = write_model_zoo_pkl(plain, tmp_path / "student.pkl")
    model = build_model(cfg)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    DistillationCheckpointer(model).load(pkl)  # what MODEL.WEIGHTS does in the trainer
    s = model.student.state_dict()
    assert all(torch.equal(s[k], v) for k, v in plain.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in model.teacher.state_dict().items())


def test_crash_while_saving_keeps_previous_checkpoint(rcnn_teacher, tmp_path, monkeypatch):
    model = build_model(distill_cfg(rcnn_teacher))
    ckpt = DistillationCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_final")
    good = (tmp_path / "model_final.pth").read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final")
    monkeypatch.undo()
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not (tmp_path / "model_final.pth.tmp").exists()
    resumed = DistillationCheckpointer(build_model(distill_cfg(rcnn_teacher)), save_dir=str(tmp_path))
    assert resumed.has_checkpoint()
    resumed.resume_or_load("", resume=True)  # loads the intact file
