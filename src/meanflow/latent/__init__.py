"""Latent-space generation: the SD VAE (encode / decode, identity) and the sharded posterior cache.

    meanflow encode IMAGENET/train CACHE          # images -> posterior mean/std shards
    meanflow train --preset imagenet-b4 --data-dir CACHE
    meanflow sample RUN -n 16                      # latents decoded with the cache's VAE

`diffusers` is an optional extra (`pip install 'meanflow[latent]'`); only `vae` imports it.
"""
