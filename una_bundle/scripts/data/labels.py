"""Anatomy label ids (FreeSurfer / SynthSeg), their names and tissue groups: one definition for the demo data, the
configs (``train.yaml``'s tissue labels) and the benchmarks."""

__all__ = [
    "BACKGROUND",
    "LEFT_CEREBRAL_WHITE_MATTER",
    "LEFT_CEREBRAL_CORTEX",
    "LEFT_LATERAL_VENTRICLE",
    "LEFT_CEREBELLUM_WHITE_MATTER",
    "LEFT_CEREBELLUM_CORTEX",
    "LEFT_THALAMUS",
    "LEFT_CAUDATE",
    "LEFT_PUTAMEN",
    "BRAINSTEM",
    "CSF",
    "RIGHT_CEREBRAL_WHITE_MATTER",
    "RIGHT_CEREBRAL_CORTEX",
    "RIGHT_LATERAL_VENTRICLE",
    "RIGHT_CEREBELLUM_WHITE_MATTER",
    "RIGHT_CEREBELLUM_CORTEX",
    "RIGHT_THALAMUS",
    "RIGHT_CAUDATE",
    "RIGHT_PUTAMEN",
    "LABELS",
    "LABEL_NAMES",
    "GM_LABELS",
    "WM_LABELS",
    "CSF_LABELS",
    "TISSUE_LABELS",
    "LEFT_RIGHT_PAIRS",
]

# FreeSurfer / SynthSeg ids.
BACKGROUND = 0
LEFT_CEREBRAL_WHITE_MATTER = 2
LEFT_CEREBRAL_CORTEX = 3
LEFT_LATERAL_VENTRICLE = 4
LEFT_CEREBELLUM_WHITE_MATTER = 7
LEFT_CEREBELLUM_CORTEX = 8
LEFT_THALAMUS = 10
LEFT_CAUDATE = 11
LEFT_PUTAMEN = 12
BRAINSTEM = 16
CSF = 24
RIGHT_CEREBRAL_WHITE_MATTER = 41
RIGHT_CEREBRAL_CORTEX = 42
RIGHT_LATERAL_VENTRICLE = 43
RIGHT_CEREBELLUM_WHITE_MATTER = 46
RIGHT_CEREBELLUM_CORTEX = 47
RIGHT_THALAMUS = 49
RIGHT_CAUDATE = 50
RIGHT_PUTAMEN = 51

#: name -> id of every class in the demo label maps (FreeSurfer names and ids).
LABELS = {
    "background": BACKGROUND,
    "Left-Cerebral-White-Matter": LEFT_CEREBRAL_WHITE_MATTER,
    "Left-Cerebral-Cortex": LEFT_CEREBRAL_CORTEX,
    "Left-Lateral-Ventricle": LEFT_LATERAL_VENTRICLE,
    "Left-Cerebellum-White-Matter": LEFT_CEREBELLUM_WHITE_MATTER,
    "Left-Cerebellum-Cortex": LEFT_CEREBELLUM_CORTEX,
    "Left-Thalamus": LEFT_THALAMUS,
    "Left-Caudate": LEFT_CAUDATE,
    "Left-Putamen": LEFT_PUTAMEN,
    "Brain-Stem": BRAINSTEM,
    "CSF": CSF,
    "Right-Cerebral-White-Matter": RIGHT_CEREBRAL_WHITE_MATTER,
    "Right-Cerebral-Cortex": RIGHT_CEREBRAL_CORTEX,
    "Right-Lateral-Ventricle": RIGHT_LATERAL_VENTRICLE,
    "Right-Cerebellum-White-Matter": RIGHT_CEREBELLUM_WHITE_MATTER,
    "Right-Cerebellum-Cortex": RIGHT_CEREBELLUM_CORTEX,
    "Right-Thalamus": RIGHT_THALAMUS,
    "Right-Caudate": RIGHT_CAUDATE,
    "Right-Putamen": RIGHT_PUTAMEN,
}
#: id -> name.
LABEL_NAMES = {v: k for k, v in LABELS.items()}
#: Grey-matter classes (cortex, cerebellar cortex, deep grey nuclei): lesion contrast compares their mean with WM.
GM_LABELS = (
    LEFT_CEREBRAL_CORTEX,
    RIGHT_CEREBRAL_CORTEX,
    LEFT_CEREBELLUM_CORTEX,
    RIGHT_CEREBELLUM_CORTEX,
    LEFT_THALAMUS,
    RIGHT_THALAMUS,
    LEFT_CAUDATE,
    RIGHT_CAUDATE,
    LEFT_PUTAMEN,
    RIGHT_PUTAMEN,
)
#: White-matter classes (cerebral and cerebellar; the mixed brainstem is in neither list).
WM_LABELS = (
    LEFT_CEREBRAL_WHITE_MATTER,
    RIGHT_CEREBRAL_WHITE_MATTER,
    LEFT_CEREBELLUM_WHITE_MATTER,
    RIGHT_CEREBELLUM_WHITE_MATTER,
)
#: Fluid classes.
CSF_LABELS = (LEFT_LATERAL_VENTRICLE, RIGHT_LATERAL_VENTRICLE, CSF)
#: Tissue classes (every brain class but fluid): where lesions grow (not inside the ventricles or the CSF).
TISSUE_LABELS = GM_LABELS + WM_LABELS + (BRAINSTEM,)
#: (left, right) id pairs, to swap when an image is flipped left-right.
LEFT_RIGHT_PAIRS = (
    (LEFT_CEREBRAL_WHITE_MATTER, RIGHT_CEREBRAL_WHITE_MATTER),
    (LEFT_CEREBRAL_CORTEX, RIGHT_CEREBRAL_CORTEX),
    (LEFT_LATERAL_VENTRICLE, RIGHT_LATERAL_VENTRICLE),
    (LEFT_CEREBELLUM_WHITE_MATTER, RIGHT_CEREBELLUM_WHITE_MATTER),
    (LEFT_CEREBELLUM_CORTEX, RIGHT_CEREBELLUM_CORTEX),
    (LEFT_THALAMUS, RIGHT_THALAMUS),
    (LEFT_CAUDATE, RIGHT_CAUDATE),
    (LEFT_PUTAMEN, RIGHT_PUTAMEN),
)
