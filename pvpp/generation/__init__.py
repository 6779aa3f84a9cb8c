"""Generation: images from a trained model. Imports nothing from `pvpp.training`.

    sample.py          samples and reconstructions (`decode_latents`, the one way in to decoding), the sample
                       command's run (SampleConfig)
    cached_sampler.py  the autoregressive decoder with cached activations (one pixel per call, the same values
                       as the full pass)
    images.py          image grids and PNG files
    energy_distance.py the energy distance between sets of images, and the order of the sample figures' rows
"""
