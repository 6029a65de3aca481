"""Training Mask2Anomaly: stage 1 (closed-set mask classification, Eq. 1-2) and stage 2
(outlier fine-tuning with AnomalyMix and the mask contrastive loss, Eq. 10-12).

Modules, one idea each:

* :mod:`.points`      uncertainty-based importance point sampling (Mask2Former), replayable;
* :mod:`.matcher`     Hungarian matching of predictions to target masks;
* :mod:`.losses`      Eq. 1-2 with deep supervision, the criterion and its loss modes;
* :mod:`.outlier_loss` the stage-2 outlier losses, Eq. 10-12 and Eq. 26-27;
* :mod:`.augment`     shortest-edge resize or box jitter, crop, colour jitter, flip
  (deterministic);
* :mod:`.data`        dataset readers (synthetic/SMIYC layout, Cityscapes, StreetHazards,
  COCO panoptic) and outlier sources (RGBA cut-outs, COCO instances);
* :mod:`.anomaly_mix` AnomalyMix cut-and-paste with the binary OOD mask;
* :mod:`.batches`     the step-indexed batch stream (what makes resuming exact);
* :mod:`.optim`       AdamW parameter groups, poly schedule, gradient clipping;
* :mod:`.trainer`     the loop: checkpoints, CSV log, validation, export;
* :mod:`.recipes`     JSON recipes (``train/*.json``);
* :mod:`.cli`         the ``m2a-pipe train`` click group.
"""
