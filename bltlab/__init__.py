"""bltlab: the Byte Latent Transformer and its fast decoders, small enough to take apart.

Entry points: `bltlab.checkpoint.load_model()` (the shipped model), `bltlab.decode.generate()`
(every decoding mode), `bltlab.train.train()`, and the CLI `python -m bltlab --help`.
"""
__version__ = "0.1.0"
