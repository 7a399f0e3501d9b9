"""Gallery: the images generated in this browser session, newest first; download or regenerate each."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.features.gallery import (
    GALLERY_KEY,
    GALLERY_MAX_BYTES,
    GALLERY_MAX_IMAGES,
    GalleryItem,
    add_image,
    new_seed,
    total_bytes,
)
from blossom_dash.ui.safe import code_span, safe_markdown

COLUMNS = 3
handle = ui.session_handle()
st.title("Gallery")
ui.backend_badge(handle.service)
st.session_state.setdefault(GALLERY_KEY, [])


def _ask_regenerate(item_id: str) -> None:
    # A callback only notes the request: the call runs in the script body, under a spinner.
    st.session_state["gallery_regenerate"] = item_id


def regenerate(item_id: str) -> None:
    """Generate the item's prompt again (same model and size, new seed) and put it first."""
    item = next((i for i in st.session_state[GALLERY_KEY] if i.id == item_id), None)
    if item is None:
        return
    img = item.image
    with ui.guard("regenerating the image"), st.spinner(f"Regenerating with {code_span(img.model)} and a new seed…"):
        result = handle.generate_image(item.prompt, model=img.model, width=img.width, height=img.height,
                                       seed=new_seed(item))
        st.session_state[GALLERY_KEY] = add_image(st.session_state[GALLERY_KEY], result, item.prompt)
        st.toast(f"New image with seed {result.seed} added first.", icon="🎲")


def render_item(item: GalleryItem) -> None:
    """One card: the image, its prompt and figures, download and regenerate buttons."""
    img = item.image
    st.image(img.data, width="stretch")
    st.markdown(safe_markdown(item.prompt, limit=160, as_typed=True))
    st.caption(f"{code_span(img.model)} · seed {img.seed} · {item.size} · {img.latency_ms:,.0f} ms"
               + (" · ⚡ from cache" if img.cached else ""))
    left, right = st.columns(2)
    left.download_button("Download", img.data, file_name=item.file_name, mime=img.content_type,
                         key=f"gallery_download_{item.id}", icon="⬇️", on_click="ignore", width="stretch")
    right.button("Regenerate", key=f"gallery_regenerate_{item.id}", icon="🎲", width="stretch",
                 on_click=_ask_regenerate, args=(item.id,),
                 help="Generate this prompt again with a new random seed (same model and size). "
                      "The new image is added to the gallery; this one stays.")


if pending := st.session_state.pop("gallery_regenerate", None):
    regenerate(pending)
items: list[GalleryItem] = st.session_state[GALLERY_KEY]
limits = (f"It keeps the last {GALLERY_MAX_IMAGES} images (at most {GALLERY_MAX_BYTES // 2**20} MB); "
          "older ones drop off.")
if not items:
    st.info("The gallery is empty. Generate an image on the **Image** page, or compare image models on "
            "**Compare** (tab **🖼️ Images**; a blind comparison's images once you have voted), both in the "
            "sidebar: every image you generate in this browser session appears here with its prompt, model, seed, "
            "size and latency, ready to download or to regenerate with a new seed.")
    st.caption("The gallery lives in this browser session only: nothing is stored on the server, and a reload "
               f"empties it. {limits}")
    st.stop()

head, clear = st.columns([5, 1], vertical_alignment="center")
head.caption(f"{len(items)} image{'s' if len(items) != 1 else ''} ({total_bytes(items) / 2**20:,.1f} MB) "
             f"generated in this browser session, newest first. Only you see them and a reload empties the "
             f"gallery: download what you want to keep. {limits}")
clear.button("Clear gallery", key="gallery_clear", icon="🧹", width="stretch",
             on_click=lambda: st.session_state.update({GALLERY_KEY: []}))
for start in range(0, len(items), COLUMNS):
    for col, item in zip(st.columns(COLUMNS), items[start:start + COLUMNS], strict=False):
        with col.container(border=True):
            render_item(item)
