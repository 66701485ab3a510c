"""The web demo: a Gradio page that samples from a pipeline folder and steps through its chain by hand.

``chain`` (the step-by-step state machine), ``options`` (what a pipeline folder offers) and ``images`` (tensors to
pictures) need only torch; ``web`` builds the page and needs Gradio (the ``dev`` extra): import it explicitly.
"""

from .chain import DenoisingChain, Guidance
from .options import PipelineOptions, load_pipeline

__all__ = ["DenoisingChain", "Guidance", "PipelineOptions", "load_pipeline"]
