import torch
from monai.data import MetaTensor

from una_bundle.scripts.model.loss_weight import LesionLossWeightd


def test_synthetic_anomaly_is_up_weighted_and_real_lesion_is_not_supervised():
    target = MetaTensor(torch.rand(1, 6, 6, 6), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    prob = torch.zeros(1, 6, 6, 6)
    prob[0, 1:3, 1:3, 1:3] = 0.5
    real = torch.zeros(1, 6, 6, 6)
    real[0, 4:, 4:, 4:] = 1
    out = LesionLossWeightd(inpaint_weight=2.0)({"target": target, "lesion_prob": prob, "real_lesion": real})
    w = out["weight"]
    assert w.shape == (1, 6, 6, 6) and w.dtype == torch.float32 and torch.equal(w.affine, target.affine)
    assert torch.allclose(w[prob > 0], torch.tensor(2.0))  # 1 + 2 * 0.5
    assert float(w[real > 0].abs().max()) == 0
    assert float(w[(prob == 0) & (real == 0)].min()) == 1.0
    healthy = LesionLossWeightd()({"target": target})
    assert torch.equal(healthy["weight"].as_tensor(), torch.ones(1, 6, 6, 6))
