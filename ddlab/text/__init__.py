"""The text world: SEDD and its autoregressive baseline on text8 (lesson 9).

==========  ====================================================================================
module      what
==========  ====================================================================================
data        text8: download, check, cache, split 90M/5M/5M, encode/decode, crops, eval chunks
model       the diffusion transformer (absorbing and uniform score, the causal AR baseline)
config      TrainConfig, the presets and ``--key value`` overrides
checkpoint  run folders: build_model/build_process, the EMA, atomic checkpoints, load_model
train       the training loss (``dwdse_loss``, via ``ddlab.losses.dwdse``), train_step, get_lr,
            train() and its CLI: ``python -m ddlab.text.train`` (alias ``python -m ddlab.train``)
evaluate    bits per character from ``nll_bound``: ``python -m ddlab.text.evaluate``
            (alias ``python -m ddlab.evaluate``)
generate    sampling and infilling text with ``ddlab.sampling``, sample metrics:
            ``python -m ddlab.text.generate`` (alias ``python -m ddlab.sample``)
==========  ====================================================================================

The noise processes, the per-token losses and the samplers are the toy world's (``ddlab``'s top
level): only the network, the data and the run machinery live here. Submodules are imported
on use (``from ddlab.text import train``), so that ``python -m ddlab.text.train`` runs cleanly.
"""
