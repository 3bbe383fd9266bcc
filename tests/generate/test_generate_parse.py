"""Templates, answer parsing/validation, record export."""

import json

import pytest

from presel.errors import PreselError
from presel.generate.parse import ParseError, build_conversation, validate_conversation
from presel.generate.templates import Template, load_templates
from presel.io.export import to_llava_record, to_sharegpt_record, write_llava_json, write_sharegpt_json
from presel.records import PoolRecord, Turn

QA = Template("t", kind="qa", user="ask", min_pairs=1, max_pairs=2)


@pytest.mark.parametrize("text", [
    '{"conversations": [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": 3}]}',
    '```json\n[{"q": "Q1", "a": "A1"}, {"Question": "Q2", "Answer": "3"}]\n```',
    'Sure! Here they are: {"qa": [{"user": "Q1", "assistant": "A1"}, {"user": "Q2", "assistant": "3"}]} Enjoy.',
    '[{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}, {"role": "user", "content": "Q2"},'
    ' {"role": "assistant", "content": "3"}]',
    "Q: Q1\nA: A1\n\n**Question 2:** Q2\n**Answer 2:** 3",
])
def test_qa_shapes(text):
    turns = build_conversation(QA, text, item_id="x")
    assert turns == [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
                     {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "3"}]


def test_qa_limits_and_malformed():
    three = json.dumps([{"question": f"Q{i}", "answer": f"A{i}"} for i in range(3)])
    assert len(build_conversation(QA, three, item_id="x")) == 4  # cut at max_pairs
    conv_t = Template("c", kind="conversation", user="u", min_pairs=2)
    with pytest.raises(ParseError, match="needs at least 2"):
        build_conversation(conv_t, '[{"question": "Q", "answer": "A"}]', item_id="x")
    for bad in ("", "I can't help", '{"conversations": [{"question": "Q"}]}', '{"conversations": [{"question": "Q", '
                '"answer": "  "}]}', '{"foo": 1}', '{"conversations": [{"question": "Q", "answer": "A"'):
        with pytest.raises(ParseError):
            build_conversation(QA, bad, item_id="x")


def test_description_and_json_kinds_with_schema():
    d = Template("d", kind="description", user="u", instructions=("Describe A.", "Describe B."))
    t1 = build_conversation(d, "  A cat on a mat. ", item_id="i1", seed=0)
    assert t1[0]["value"] in ("<image>\nDescribe A.", "<image>\nDescribe B.") and t1[1]["value"] == "A cat on a mat."
    assert build_conversation(d, "x", item_id="i1", seed=0)[0] == t1[0]  # same id + seed: same instruction
    schema = {"type": "object", "required": ["scene"], "properties": {"scene": {"type": "string"}}}
    j = Template("j", kind="json", user="u", instructions=("List.",), json_schema=schema)
    t = build_conversation(j, '```json\n{"scene": "kitchen"}\n```', item_id="i")
    assert json.loads(t[1]["value"]) == {"scene": "kitchen"}
    with pytest.raises(ParseError, match="json_schema at scene"):
        build_conversation(j, '{"scene": 3}', item_id="i")
    with pytest.raises(ParseError, match="json_schema at \\(root\\)"):
        build_conversation(j, '{"objects": []}', item_id="i")
    with pytest.raises(ParseError):
        build_conversation(j, "a kitchen", item_id="i")


def test_validate_conversation_image_token():
    turns = [{"from": "human", "value": "Q <image> <image>"}, {"from": "gpt", "value": "A <image>"}]
    fixed = validate_conversation(turns)
    assert fixed[0]["value"] == "Q <image> " and fixed[1]["value"] == "A"
    with pytest.raises(ParseError, match="no <image> token"):
        validate_conversation([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], fix_image_token=False)
    with pytest.raises(ParseError, match="expected 'human'"):
        validate_conversation([{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}])
    with pytest.raises(ParseError, match="empty"):
        validate_conversation([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A"}])


def test_templates_defaults_lookup_and_user_file(tmp_path):
    ts = load_templates()
    assert {"vqa", "ocr", "chart", "caption", "grounding", "conversation"} <= {t.name for t in ts.templates}
    assert ts.for_task("chartqa").name == "chart" and ts.for_task("textvqa").name == "ocr"
    assert ts.for_task("ocr_vqa").name == "ocr" and ts.for_task("coco_caption").name == "caption"
    assert ts.for_task("refcoco").name == "grounding" and ts.for_task("llava_conversation").name == "conversation"
    assert ts.for_task("zebra").name == "vqa" and "zebra" in ts.notes and not ts.notes.keys() - {"zebra"}
    p = tmp_path / "t.yaml"
    p.write_text("default: mine\ntemplates:\n  mine:\n    kind: description\n    user: Say {task}.\n"
                 "    instructions: [Tell me.]\n  vqa:\n    user: custom vqa\n")
    ts = load_templates(p)
    assert ts.for_task("zebra").name == "mine" and ts.for_task("gqa").user == "custom vqa"
    assert ts.for_task("zebra").render(ts.for_task("zebra").user, "zebra") == "Say zebra."
    for text, msg in [("templates:\n  a:\n    kind: poem\n    user: x\n", "kind='poem'"),
                      ("templates:\n  a:\n    user: x\n    colour: red\n", "unknown field"),
                      ("templates:\n  a:\n    kind: description\n    user: x\n", "needs 'instructions'"),
                      ("templates:\n  a:\n    user: x\n    json_schema: {type: bogus}\n", "not a valid JSON schema"),
                      ("templates: [\n", "not valid YAML"),
                      ("default: nope\n", "default template 'nope'")]:
        p.write_text(text)
        with pytest.raises(PreselError, match=msg):
            load_templates(p)


def test_export_records_roundtrip(tmp_path):
    rec = PoolRecord("a", "x/1.png", "vqa", 1, (Turn("user", "<image>\nQ"), Turn("assistant", "A")))
    llava = to_llava_record(rec)
    assert llava == {"id": "a", "image": "x/1.png", "task": "vqa",
                     "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    sg = to_sharegpt_record(llava)
    assert sg == {"id": "a", "images": ["x/1.png"], "task": "vqa",
                  "messages": [{"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "A"}]}
    assert to_llava_record(sg) == llava  # both directions
    assert write_llava_json(tmp_path / "l.json", [rec, sg]) == 2
    assert json.loads((tmp_path / "l.json").read_text()) == [llava, llava]
    assert write_sharegpt_json(tmp_path / "s.json", []) == 0 and json.loads((tmp_path / "s.json").read_text()) == []
    with pytest.raises(PreselError, match="no 'conversations'"):
        to_llava_record({"id": "b", "image": "y.png"})
