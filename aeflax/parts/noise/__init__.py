"""Noise parts: input corruption for denoising autoencoders (`noise.kind=<module name>`)."""
