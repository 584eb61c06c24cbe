"""Sampling: the reverse process and its samplers.

``registry`` names the samplers (``registry.get_sampler``); ``chain`` is
the one ``lax.scan`` driver they share; ``ancestral`` is Algorithm 2,
``ddim`` the DDIM step, ``spacing`` the choice of timesteps for fewer
steps; ``scan_progress`` reports the steps done from inside the scan;
``generate`` draws images from a config and parameters (like
diffusers' DDPMPipeline); ``figures`` holds the paper's Figs. 7-8 (Fig. 6
is the samplers' trajectory).
"""
