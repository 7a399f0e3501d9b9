"""Image: draw a picture from a prompt with an image model; every image joins the Gallery."""

import random

import streamlit as st

from blossom_dash import ui
from blossom_dash.features import snippets
from blossom_dash.features.gallery import GALLERY_KEY, GALLERY_MAX_IMAGES, add_image

handle = ui.session_handle()
service = handle.service
st.title("Image")
ui.backend_badge(service)
if service.replay_only:
    st.caption(":violet-badge[📼 REPLAY ONLY] Images come from recordings; prompts not recorded are refused.")

SIZES = {"Square 1024×1024": (1024, 1024), "Square 512×512": (512, 512), "Landscape 1024×768": (1024, 768),
         "Portrait 768×1024": (768, 1024), "Wide 1280×720": (1280, 720)}
st.session_state.setdefault("playground_image_seed", random.randint(0, 2**31 - 1))


def _new_seed() -> None:
    """🎲: a random seed, and draw at once, so the image shown always matches the seed box."""
    st.session_state["playground_image_seed"] = random.randint(0, 2**31 - 1)
    st.session_state["playground_image_redraw"] = True


with st.form("playground_image_form", border=False):
    image_prompt = st.text_area("Describe the image", key="playground_image_prompt", height=90,
                                placeholder="A watercolour lighthouse at dawn, soft light")
    c1, c2, c3 = st.columns([2, 2, 1])
    image_model = ui.model_picker(service, "image", key="playground_image_model", where=c1)
    size = c2.selectbox("Size", list(SIZES), key="playground_image_size")
    c3.number_input("Seed", 0, 2**31 - 1, key="playground_image_seed")
    generate = st.form_submit_button("Generate image", type="primary", icon="🎨")
st.button("🎲 New seed", key="playground_new_seed", on_click=_new_seed,
          help="Draw the same prompt again with a random seed")
if generate or st.session_state.pop("playground_image_redraw", False):
    width, height = SIZES[size]
    seed = int(st.session_state["playground_image_seed"])
    with ui.guard("generating the image"), st.spinner("Generating…"):
        st.session_state.pop("playground_last_image", None)  # never an old image under a new seed
        st.session_state["playground_last_image"] = image = handle.generate_image(
            image_prompt, model=image_model, width=width, height=height, seed=seed)
        st.session_state["playground_image_code"] = snippets.code_for_image(image_prompt, image.model, width,
                                                                            height, image.seed)
        st.session_state[GALLERY_KEY] = add_image(st.session_state.get(GALLERY_KEY, []), image, image_prompt)
image = st.session_state.get("playground_last_image")
if image is not None:
    st.image(image.data, caption=f"seed {image.seed} · {image.width}×{image.height}", width=min(image.width, 640))
    st.caption(ui.result_caption(image) + f" · also in the **Gallery** (this session's last {GALLERY_MAX_IMAGES})")
    st.expander("Show code", icon="🐍").code(st.session_state.get("playground_image_code", ""), language="python")
    ext = image.content_type.split("/")[-1].replace("jpeg", "jpg")
    st.download_button("Download", image.data, file_name=f"blossom-{image.model}-{image.seed}.{ext}",
                       mime=image.content_type, key="playground_download", icon="⬇️")
elif not generate:
    st.info("Describe a picture and press **Generate image**. The same prompt, size and seed give the same "
            "image again; 🎲 draws it with a new seed.", icon="🎨")
