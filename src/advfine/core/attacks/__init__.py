"""Adversarial attacks on models taking images in [0, 1] (normalization is inside the model, so epsilon is in
pixel units), each in a threat model:

* ``threat``: ``ThreatModel``, the L-infinity or L2 ball (``attack.norm``) and the valid image range; its
  projection, random start, steepest-ascent step and containment check serve every attack;
* ``pgd``: PGD (Madry et al. 2018), the paper's attack, for training and evaluation;
* ``apgd``: APGD-CE and APGD-T (Croce & Hein 2020), parameter-free, momentum and step-size halving;
* ``fab``: FAB-T (Croce & Hein 2020), a minimum-norm attack, through torchattacks;
* ``square``: the Square attack (Andriushchenko et al. 2020), black-box random search.

``advfine.core.evaluate`` runs them as a suite, per sample, and ``advfine.core.audit`` checks for signs of
failed attacks (gradient masking).
"""
