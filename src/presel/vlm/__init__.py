"""presel.vlm: load any Hugging Face VLM, render conversations with response-only labels, build offline LLaVAs.

* :mod:`presel.vlm.load`: ``load_vlm(model, dtype=, device=) -> (model, processor)``
* :mod:`presel.vlm.render`: ``Encoded``, ``encode_conversation``, ``collate``, ``response_loss``
* :mod:`presel.vlm.build`: ``build_tiny_llava(out)``, ``build_small_llava(out)``
"""
