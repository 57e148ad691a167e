"""The integration checks' test scan: the 2 mm MNI152 brain shipped in nilearn (no download) with a dark 12 mm ball.

python .ci/make_test_scan.py OUT.nii.gz
"""

import sys

import nibabel as nib
import numpy as np
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

template = load_mni152_template(resolution=2)
brain = np.asarray(load_mni152_brain_mask(resolution=2).get_fdata()) > 0
data = np.asarray(template.get_fdata(), dtype=np.float32) * brain
ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij"), -1)
centre = np.linalg.solve(template.affine, [28.0, -20.0, 20.0, 1.0])[:3]  # right periventricular white matter, MNI mm
lesion = (np.linalg.norm((ijk - centre) * 2.0, axis=-1) < 12.0) & brain  # a 12 mm-radius ball
data[lesion] *= 0.35
nib.save(nib.Nifti1Image(data, template.affine), sys.argv[1])
print("test scan", sys.argv[1], data.shape, "lesion voxels", int(lesion.sum()))
