"""The Gradio page of the web demo: controls, Generate, and Denoise / Diffuse / Reset over a :class:`DenoisingChain`;
an Inpaint tab fills what is painted on an uploaded image (:mod:`.inpaint`).

Served on loopback only, with Gradio's analytics off and no share link; every asset the page needs (fonts included)
comes from the local server, so it renders with no network. Requests must name the server by a loopback Host
(``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``): a web page whose own host name was re-pointed at 127.0.0.1
(DNS rebinding) sends its own name, and is refused.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Gradio reads this when it is imported: no usage reports or version checks leave the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402

from .chain import DenoisingChain, Guidance, check_seed  # noqa: E402
from .images import to_grid_image  # noqa: E402
from .inpaint import check_upload, inpaint  # noqa: E402
from ..pipelines.recipes import FAST_RECIPE, SAMPLERS  # noqa: E402
from .options import UNCONDITIONAL, PipelineOptions, load_pipeline, parse_class_choice  # noqa: E402

DEFAULT_PIPELINE = "demo_output/pipeline"

__all__ = [
    "DEFAULT_PIPELINE",
    "LoopbackHostMiddleware",
    "build_demo",
    "check_loopback",
    "is_loopback_host",
    "launch",
    "pipeline_message",
]

# Host headers a browser sends to this machine's loopback interface, for messages (an IPv6 literal comes in brackets).
LOOPBACK_HOST_NAMES = ("127.0.0.1", "localhost", "[::1]")

# Loaded pipelines by resolved folder, shared read-only by every visitor (each chain has its own scheduler).
_PIPELINES: dict[str, Any] = {}
_PIPELINES_LOCK = threading.Lock()


def _get_pipeline(path: str) -> Any:
    key = str(Path(path).expanduser().resolve())
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = load_pipeline(key)
        return _PIPELINES[key]


def pipeline_message(path: str) -> tuple[Any | None, str]:
    """Try to load ``path``; returns (pipeline or None, a Markdown line saying what was loaded or why not).

    Args:
        path: the pipeline folder.
    """
    try:
        pipeline = _get_pipeline(path)
    except FileNotFoundError:
        other = "a pipeline folder (one written by `save_pretrained` or a converter) above and press *Load*"
        if path == DEFAULT_PIPELINE:
            hint = f"Run `make demo` to train and save the digits pipeline there, or enter {other}."
        else:
            hint = f"Enter {other}."
        return None, f"**No pipeline folder at `{path}`.** {hint}"
    except Exception as error:  # a broken folder must not take the page down: say what went wrong
        return None, f"**Could not load `{path}`:** {error}"
    options = PipelineOptions.from_pipeline(pipeline)
    guidance = [name for name, on in (("classifier", options.has_classifier), ("classifier-free", options.has_null_class)) if on]
    classes = sum(1 for _, value in options.class_choices if value != UNCONDITIONAL)
    return pipeline, (
        f"Loaded `{path}`: {options.image_size}x{options.image_size} px, "
        f"{f'{classes} classes' if classes else 'unconditional'}, T = {options.num_train_timesteps}, "
        f"guidance: {', '.join(guidance) or 'none'}."
    )


@dataclass(frozen=True)
class _Settings:
    """The UI's values, as the chain needs them."""

    path: str
    class_choice: Any
    classifier_scale: float
    guidance_scale: float
    scheduler: str
    steps: int
    eta: float
    batch_size: int
    seed: int

    def grid(self) -> tuple:
        """What fixes a chain: changing any of these starts a fresh one. Guidance may change between steps."""
        eta = float(self.eta or 0.0) if self.scheduler == "ddim" else 0.0
        # A cleared number box arrives as None: fall back to the defaults shown at first.
        seed = check_seed(self.seed if self.seed is not None else 0)
        return (self.path, self.scheduler, int(self.steps or 1), eta, int(self.batch_size or 1), seed)

    def guidance(self, options: PipelineOptions) -> Guidance:
        label = parse_class_choice(self.class_choice)
        if label is None:  # unconditional: there is nothing to guide toward
            return Guidance()
        classifier_scale = float(self.classifier_scale) if options.has_classifier else 0.0
        # w = 1 is plain conditional sampling: skip the second (unconditional) U-Net pass.
        guidance_scale = float(self.guidance_scale) if options.has_null_class and float(self.guidance_scale) != 1.0 else None
        return Guidance(class_label=label, classifier_scale=classifier_scale, guidance_scale=guidance_scale)


@dataclass
class _Session:
    """One visitor's chain and the grid it was made for."""

    chain: DenoisingChain
    grid: tuple


def _new_session(settings: _Settings) -> _Session:
    pipeline, message = pipeline_message(settings.path)
    if pipeline is None:
        raise gr.Error(message.replace("*", "").replace("`", ""))
    path, scheduler, steps, eta, batch_size, seed = settings.grid()
    try:
        chain = DenoisingChain(pipeline, scheduler=scheduler, num_inference_steps=steps, eta=eta, batch_size=batch_size, seed=seed)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    return _Session(chain=chain, grid=settings.grid())


def _render(session: _Session, settings: _Settings, note: str = "") -> tuple[_Session, Image.Image, Image.Image, str]:
    chain = session.chain
    options = PipelineOptions.from_pipeline(chain.pipeline)
    try:
        pred_x0 = chain.pred_original_sample(settings.guidance(options))
    except ValueError as error:
        raise gr.Error(str(error)) from None
    path, scheduler, steps, eta, batch_size, seed = session.grid
    eta_text = f", eta {eta:g}" if scheduler == "ddim" else ""
    status = (
        f"### {chain.describe()}\n{SAMPLERS[FAST_RECIPE.sampler] if scheduler == 'fast' else scheduler.upper()}, "
        f"{chain.num_steps} steps{eta_text}, seed {seed}, "
        f"{batch_size} image{'s' if batch_size > 1 else ''}{note}"
    )
    return session, to_grid_image(chain.sample), to_grid_image(pred_x0), status


def _session_for(state: _Session | None, settings: _Settings) -> tuple[_Session, str]:
    """The visitor's chain, or a fresh one when there is none yet or its grid settings changed."""
    if state is not None and state.grid == settings.grid():
        return state, ""
    note = " · settings changed: started from a fresh x_T" if state is not None else ""
    return _new_session(settings), note


def _run(action: str, state: _Session | None, count: float | None, *values: Any) -> tuple:
    settings = _Settings(*values)
    try:
        settings.grid()  # the seed and the other grid values are checked before any work
    except ValueError as error:
        raise gr.Error(str(error)) from None
    note = ""
    if action in ("generate", "reset"):
        session = _new_session(settings)
    else:
        session, note = _session_for(state, settings)
    chain = session.chain
    options = PipelineOptions.from_pipeline(chain.pipeline)
    try:
        if action == "generate":
            chain.denoise(chain.num_steps, settings.guidance(options))
        elif action == "denoise":
            chain.denoise(int(count or 0), settings.guidance(options))
        elif action == "diffuse":
            chain.diffuse(int(count or 0))
    except ValueError as error:
        raise gr.Error(str(error)) from None
    return _render(session, settings, note)


def _upload_editor(**kwargs: Any) -> gr.ImageEditor:
    """Gradio's image editor (``kwargs`` as ``gr.ImageEditor``'s), with every image the page sends (the background,
    each drawn layer, the composite) refused in one line above ``MAX_UPLOAD_PIXELS`` before Gradio decodes it whole.

    The check wraps this instance's converter: a subclass of a Gradio component would make Gradio write a ``.pyi`` stub
    beside this module whenever it is imported.
    """
    editor = gr.ImageEditor(**kwargs)
    convert = editor.convert_and_format_image

    def checked_convert(file: Any, flatten_on_white: bool = False) -> Any:
        if file is not None:
            try:
                check_upload(getattr(file, "path", None) or file)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked_convert
    return editor


def _inpaint_tab(image_args: dict[str, Any]) -> tuple:
    """The inpainting tab's components: an image editor to upload an image and draw on it, RePaint's two settings,
    Fill, and the results. The class, scales, steps and seed are the sampling controls above."""
    gr.Markdown(
        "Upload an image (it is resized to the model's size) and paint over what to replace; **Fill** inpaints it "
        "with RePaint (resampling with time jumps) under the class, guidance, steps and seed chosen above."
    )
    editor = _upload_editor(
        type="pil", label="Image: paint the region to fill", elem_id="inpaint-editor", height=360, layers=False,
        sources=("upload", "clipboard"), transforms=(), brush=gr.Brush(default_size=24, colors=["#ff00ff"], color_mode="fixed"),
    )
    with gr.Row():
        jump_length = gr.Slider(1, 50, step=1, value=10, label="Jump length (RePaint's j)", elem_id="jump-length")
        jump_n_sample = gr.Slider(1, 20, step=1, value=10, label="Resamplings (RePaint's r; 1 = none)", elem_id="jump-n-sample")
    inpaint_button = gr.Button("Fill", variant="primary", elem_id="inpaint-btn")
    inpaint_status = gr.Markdown("Upload an image and paint on it, then press **Fill**.", elem_id="inpaint-status")
    with gr.Row():
        masked_image = gr.Image(label="the region to fill", elem_id="inpaint-masked", **image_args)
        filled_image = gr.Image(label="filled", elem_id="inpaint-result", **image_args)
    return editor, jump_length, jump_n_sample, inpaint_button, masked_image, filled_image, inpaint_status


def _inpaint(editor: dict | None, jump_length: float, jump_n_sample: float, *values: Any) -> tuple:
    settings = _Settings(*values)
    pipeline, message = pipeline_message(settings.path)
    if pipeline is None:
        raise gr.Error(message.replace("*", "").replace("`", ""))
    editor = editor or {}
    try:
        result = inpaint(
            pipeline, editor.get("background"), [layer for layer in editor.get("layers") or [] if layer is not None],
            settings.guidance(PipelineOptions.from_pipeline(pipeline)), int(settings.steps or 1),
            settings.seed if settings.seed is not None else 0, int(jump_length), int(jump_n_sample),
        )
    except ValueError as error:
        raise gr.Error(str(error)) from None
    return result.masked, result.filled, result.status


def _control_updates(path: str) -> tuple:
    """New values for the pipeline-dependent controls after loading ``path``."""
    pipeline, message = pipeline_message(path)
    if pipeline is None:
        return (path, None, message, gr.Dropdown(choices=[], value=None), gr.Slider(), gr.Slider(), gr.Slider(), gr.Radio())
    options = PipelineOptions.from_pipeline(pipeline)
    return (
        path,
        None,  # a new folder: drop the old chain
        message,
        gr.Dropdown(choices=list(options.class_choices), value=options.default_class),
        gr.Slider(interactive=options.has_classifier, value=options.default_classifier_scale),
        gr.Slider(interactive=options.has_null_class, value=3.0 if options.has_null_class else 1.0),
        gr.Slider(maximum=options.num_train_timesteps, value=options.default_steps),
        gr.Radio(value=options.default_scheduler),
    )


def build_demo(pipeline_path: str = DEFAULT_PIPELINE) -> gr.Blocks:
    """The page, for the pipeline folder ``pipeline_path`` (any other can be loaded from the page).

    Args:
        pipeline_path: the folder loaded at first; when it is absent the page says so and how to make it.
    """
    pipeline, message = pipeline_message(pipeline_path)
    options = PipelineOptions.from_pipeline(pipeline) if pipeline is not None else None

    with gr.Blocks(title="guided_diffusers: step through the chain", analytics_enabled=False) as demo:
        gr.Markdown(
            "# guided_diffusers: sample, and step through the chain\n"
            "Pick a class and the guidance, then **Generate** a batch; or walk the chain by hand: **Reset** draws "
            "x_T from the seed, **Denoise N steps** takes N reverse steps with the chosen guidance, **Diffuse N "
            "steps** adds noise back up the same grid, from the current x_t. Changing the class or scales between "
            "steps steers the rest of the chain; changing the scheduler, steps, eta, batch or seed starts afresh."
        )
        path_state = gr.State(pipeline_path)
        chain_state = gr.State(None)
        with gr.Row():
            path_box = gr.Textbox(value=pipeline_path, label="Pipeline folder", scale=4, elem_id="pipeline-path")
            load_button = gr.Button("Load", scale=1, elem_id="load-btn")
        info = gr.Markdown(message, elem_id="pipeline-info")
        with gr.Row():
            with gr.Column():
                class_choice = gr.Dropdown(
                    choices=list(options.class_choices) if options else [],
                    value=options.default_class if options else None,
                    label="Class",
                    elem_id="class-choice",
                )
                classifier_scale = gr.Slider(
                    0.0, 20.0, step=0.5, label="Classifier scale (noisy classifier's gradient; 0 = off)",
                    value=options.default_classifier_scale if options else 0.0,
                    interactive=bool(options and options.has_classifier),
                )
                guidance_scale = gr.Slider(
                    0.0, 10.0, step=0.5, label="Guidance scale (classifier-free; 1 = plain conditional)",
                    value=3.0 if options and options.has_null_class else 1.0,
                    interactive=bool(options and options.has_null_class),
                )
            with gr.Column():
                scheduler = gr.Radio([("DDPM", "ddpm"), ("DDIM", "ddim"), (f"Fast recipe: {SAMPLERS[FAST_RECIPE.sampler]}", "fast")],
                                     value=options.default_scheduler if options else "ddpm",
                                     label="Scheduler (default: the fast recipe)", elem_id="scheduler-choice")
                steps = gr.Slider(
                    1, options.num_train_timesteps if options else 1000, step=1, label="Steps (respacing)",
                    value=options.default_steps if options else 50,
                )
                eta = gr.Slider(0.0, 1.0, step=0.1, value=0.0, label="eta (DDIM only; 0 = deterministic)")
                with gr.Row():
                    batch_size = gr.Slider(1, 16, step=1, value=4, label="Images")
                    seed = gr.Number(value=0, precision=0, label="Seed")
        with gr.Tabs():
            with gr.Tab("Step through the chain", elem_id="chain-tab"):
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    reset_button = gr.Button("Reset to x_T", elem_id="reset-btn")
                with gr.Row():
                    count = gr.Number(value=1, precision=0, minimum=1, label="N", scale=1, elem_id="step-count")
                    denoise_button = gr.Button("Denoise N steps", scale=2, elem_id="denoise-btn")
                    diffuse_button = gr.Button("Diffuse N steps", scale=2, elem_id="diffuse-btn")
                status = gr.Markdown("Press **Generate** or **Reset** to start.", elem_id="step-counter")
                with gr.Row():
                    image_args = dict(type="pil", format="png", interactive=False, height=320, buttons=["download", "fullscreen"])
                    sample_image = gr.Image(label="x_t (the current sample)", elem_id="xt-image", **image_args)
                    x0_image = gr.Image(label="predicted x_0 (from this x_t)", elem_id="x0-image", **image_args)
            with gr.Tab("Inpaint", elem_id="inpaint-tab"):
                inpaint_controls = _inpaint_tab(image_args)

        settings = [path_state, class_choice, classifier_scale, guidance_scale, scheduler, steps, eta, batch_size, seed]
        outputs = [chain_state, sample_image, x0_image, status]
        for button, action in (
            (generate_button, "generate"),
            (reset_button, "reset"),
            (denoise_button, "denoise"),
            (diffuse_button, "diffuse"),
        ):
            button.click(
                functools.partial(_run, action),
                inputs=[chain_state, count, *settings],
                outputs=outputs,
                api_name=action,
            )
        editor, jump_length, jump_n_sample, inpaint_button, masked_image, filled_image, inpaint_status = inpaint_controls
        inpaint_button.click(
            _inpaint, inputs=[editor, jump_length, jump_n_sample, *settings],
            outputs=[masked_image, filled_image, inpaint_status], api_name="inpaint",
        )
        load_outputs = [path_state, chain_state, info, class_choice, classifier_scale, guidance_scale, steps, scheduler]
        load_button.click(_control_updates, inputs=[path_box], outputs=load_outputs, api_name="load")
        path_box.submit(_control_updates, inputs=[path_box], outputs=load_outputs, api_name=False)
    return demo


def check_loopback(host: str) -> None:
    """Refuse any address but loopback: the demo is for this machine only.

    Args:
        host: the address to bind (``127.0.0.1``, ``localhost``, ``::1``).
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"expected a loopback address to bind (127.0.0.1, localhost, ::1), got {host!r}")


def is_loopback_host(host_header: str, port: int) -> bool:
    """Whether a request's Host header names this server on loopback: ``localhost`` or a loopback IP literal
    (``127.0.0.1``, ``[::1]``), with ``port``. A DNS-rebinding page sends its own host name, never one of these.

    Args:
        host_header: the Host header's value.
        port: the port the server listens on.
    """
    name, colon, port_text = host_header.strip().lower().rpartition(":")
    if not colon or port_text != str(port):
        return False
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        check_loopback(name)
    except ValueError:
        return False
    return True


class LoopbackHostMiddleware:
    """ASGI middleware that answers 400 to any HTTP request (and closes any WebSocket) whose Host header is not
    :func:`is_loopback_host`: binding to 127.0.0.1 keeps other machines out, this keeps out pages of other sites
    that a browser on this machine runs (DNS rebinding).

    Args:
        app: the wrapped ASGI app.
        port: the port the server listens on.
    """

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host, self.port):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                expected = ", ".join(f"{name}:{self.port}" for name in LOOPBACK_HOST_NAMES)
                message = f"expected a request to this machine's loopback address ({expected}), got Host {host[:100]!r}\n"
                await PlainTextResponse(message, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def launch(pipeline_path: str = DEFAULT_PIPELINE, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> gr.Blocks:
    """Serve the page on ``host``:``port`` until interrupted.

    Args:
        pipeline_path: the folder loaded at first.
        host: a loopback address.
        port: the port.
        kwargs: further ``gr.Blocks.launch`` arguments (e.g. ``prevent_thread_lock=True`` for tests).

    Returns:
        the page (with ``prevent_thread_lock=True`` it is still serving: stop it with ``.close()``).
    """
    check_loopback(host)
    demo = build_demo(pipeline_path)
    demo.queue(default_concurrency_limit=1)  # one chain step at a time: the 2-core CPU is the bottleneck
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        show_error=True,
        app_kwargs={"middleware": [Middleware(LoopbackHostMiddleware, port=port)]},
        **kwargs,
    )
    return demo
