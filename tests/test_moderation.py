"""Moderation: evasions of the bundled lists are blocked, safe words that contain a blocked term
are not, personal data is blocked or redacted, refusals never repeat the text; and the service
refuses prompts and filters outputs through the official openai client."""

import re

import openai
import pytest

from genforge.config import validate
from genforge.errors import ConfigError
from genforge.models import TextSamples
from genforge.moderation import ModerationConfig, Moderator, moderate_samples
from genforge.moderation.normalize import skeleton
from test_serve import CONFIG, Server, home, http, key, server, tables  # noqa: F401 - the live service's fixtures

NO_PII = ModerationConfig(pii="off")
HAN = r"[\u4e00-\u9fff]"


@pytest.fixture(scope="module")
def moderator():
    return Moderator(NO_PII)


@pytest.mark.parametrize("kind, text", [
    ("plain", "Then I will kill you, tonight"),
    ("upper case", "I WILL KILL YOU"),
    ("full-width", "ｉ ｗｉｌｌ ｋｉｌｌ ｙｏｕ"),
    ("math letters", "i will 𝐤𝐢𝐥𝐥 you"),
    ("accents", "i wíll kïll you"),
    ("zero-width", "i will ki\u200bll you"),
    ("separators .", "i will k.i.l.l you"),
    ("separators space", "i will k i l l you"),
    ("separators -", "buy c-o-c-a-i-n-e here"),
    ("separators after a short word", "how to make a b*o*m*b"),
    ("homoglyph Cyrillic", "i will kіll yоu"),  # Cyrillic і and о
    ("homoglyph Greek", "buy cοcαine"),  # Greek ο and α
    ("leetspeak", "i w1ll k1ll y0u"),
    ("leetspeak symbols", "buy c0c@1ne, $ell it"),
    ("leetspeak inflection", "you n1gg3r5"),
    ("no spaces", "killyourself"),
    ("prefix term", "free pornography"),
    ("inflection", "he rapes"),
    ("zh plain", "我要杀了你"),
    ("zh traditional", "我要殺了你"),
    ("zh traditional drugs", "這裡出售冰毒"),
    ("zh full-width latin", "出售Ｋ粉"),
    ("zh separators space", "出 售 冰 毒"),
    ("zh separators dot", "如·何·自·杀"),
    ("zh traditional separators", "如 何 自 殺"),
])
def test_evasions_are_blocked(moderator, kind, text):
    assert not moderator.check(text).allowed, kind


@pytest.mark.parametrize("text", [
    "Scunthorpe United won at home", "a cumulative discount", "grape juice and a cocktail", "our therapist says",
    "cold-pressed rapeseed oil", "she graduated summa cum laude", "Assassin's Creed", "an analysis of spice markets",
    "flame retardant fabric", "Dickens, Essex and Sussex", "kill the lights", "the deadline will kill me",
    "a killer deal on grills", "I take 5 at 7:30, 4 of them", "b a",
    "这可是个大麻烦", "刚出炉的大麻花", "体操服", "新款体操你穿着很合适", "暖色情调的客厅", "温和去死皮", "杂种优势",
    "新鲜枪乌贼，买枪乌贼送酱料", "门口交通很方便", "半夜有色情电话打进房间", "自杀式袭击的新闻报道", "她的小说写到了自杀", "大麻籽油",
])
def test_safe_words_and_compounds_are_allowed(moderator, text):
    assert moderator.check(text).allowed, text


def test_skeleton_undoes_width_case_lookalikes_script_and_separators():
    assert skeleton("ＢＵＹ Ｃ.Ｏ.Ｋ.Ｅ") == "buy coke"
    assert skeleton("Кіll") == "kill"  # Cyrillic К, і
    assert skeleton("這裡 出 售") == "这里出售"
    assert skeleton("e.g. 3.5") == "eg. 35"  # harmless: abbreviations and decimals join too


def test_refusals_name_the_rule_never_the_text(moderator):
    v = moderator.check("Let's buy heroin today")
    assert (v.allowed, v.list) == (False, "drugs") and re.fullmatch(r"drugs:\d+", v.rule)
    message = v.message("prompt")
    assert v.rule in message and "drugs" in message and "heroin" not in message.lower()
    assert moderator.check("出售海洛因").rule.startswith("drugs:")


def test_personal_data_blocked_or_redacted_or_let_through():
    text = "Call me on 138 1234 5678 or mail zhang@example.com"
    blocked = Moderator(ModerationConfig(pii="block")).check(text)
    assert (blocked.allowed, blocked.rule, blocked.list) == (False, "pii:phone", "pii")
    assert "1234" not in blocked.message("output")
    redacting = Moderator(ModerationConfig(pii="redact"))
    redacted = redacting.check(text, "output")
    assert redacted.allowed and redacted.redacted_text == "Call me on [PHONE] or mail [EMAIL]"
    assert redacting.check("电话：１３８１２３４５６７８").redacted_text == "电话：[PHONE]"  # full-width digits
    assert redacting.check("I will kill you, 13812345678").list == "violence"  # the lists first
    assert Moderator(NO_PII).check(text).redacted_text is None


def test_switches_and_where():
    text = "i will kill you"
    assert Moderator(ModerationConfig(enabled=False)).check(text).allowed
    assert Moderator(ModerationConfig(check_prompts=False)).check(text, "prompt").allowed
    assert not Moderator(ModerationConfig(check_prompts=False)).check(text, "output").allowed
    assert not Moderator(ModerationConfig(check_outputs=False)).check(text, "prompt").allowed
    assert Moderator(ModerationConfig(lists=["drugs"])).check(text).allowed
    with pytest.raises(ValueError, match="where"):
        Moderator().check(text, "input")


def test_extra_block_and_allow_files(tmp_path):
    block = tmp_path / "brand.txt"
    block.write_text("# competitors we never name\n\nacme\n竞品牌\n", encoding="utf-8")
    allow = tmp_path / "ok.txt"
    allow.write_text("acme ridge\n", encoding="utf-8")
    m = Moderator(ModerationConfig(lists=[], block_files=[block], allow_files=[allow], pii="off"))
    assert m.check("Better than ACME!").rule == "brand:3" and m.check("Better than ACME!").list == "brand"
    assert m.check("我们比競品牌好").rule == "brand:4"  # traditional 競
    assert m.check("hiking near Acme Ridge").allowed and m.check("acmeish").allowed


@pytest.mark.parametrize("data, says", [
    ({"lists": ["slurs", "gossip"]}, "unknown bundled lists ['gossip']"),
    ({"block_files": ["/nope/terms.txt"]}, "list files not found: /nope/terms.txt"),
    ({"pii": "mask"}, "'pii'"),
    ({"piii": "off"}, "unknown key 'piii'"),
    ({"enabled": "sometimes"}, "'enabled'"),
])
def test_config_errors_name_the_key(data, says):
    with pytest.raises(ConfigError) as e:
        validate(ModerationConfig, data, source="moderation")
    assert says in str(e.value)


def test_config_errors_for_list_files(tmp_path):
    dup = tmp_path / "drugs.txt"
    dup.write_text("x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be unique"):
        validate(ModerationConfig, {"block_files": [str(dup)]})
    empty = tmp_path / "empty.txt"
    empty.write_text("ok\n ·· \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2: the term has no letter"):
        Moderator(ModerationConfig(lists=[], block_files=[empty]))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        Moderator(ModerationConfig(lists=[], block_files=[binary]))


def test_generated_texts_are_filtered_like_answers():
    samples = TextSamples(["a fine day", "i will kill you", "ring 13812345678"], ["p"] * 3, ["stop", "length", "stop"])
    out = moderate_samples(Moderator(), samples)
    assert out.texts == ["a fine day", "", "ring [PHONE]"]
    assert out.finish_reasons == ["stop", "content_filter", "stop"] and out.prompts == samples.prompts


# ----------------------------------------------------------------------------- the live service

def refusals(metrics: str) -> dict[tuple[str, str, str], float]:
    """(rule, list, where) -> count, from /metrics (label order differs in multiprocess mode)."""
    out = {}
    for labels, value in re.findall(r"^genforge_moderation_refusals_total\{(.*)\} (\S+)$", metrics, re.M):
        kv = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[kv["rule"], kv["list"], kv["where"]] = float(value)
    return out


def test_the_service_refuses_prompts_and_counts_them(server, key):
    client = server.client(key)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="writer", prompt="ok, I will k.i.l.l you", max_tokens=4)
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "content_policy_violation" and err["param"] == "prompt"
    assert re.search(r"rule violence:\d+ of list violence", err["message"]) and "kill" not in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="writer", messages=[{"role": "user", "content": "我要殺了你"}], stream=True)
    assert e.value.body["code"] == "content_policy_violation" and e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="digits", prompt="buy cocaine", n=1)
    assert e.value.body["code"] == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as e:
        tables(client, n=2, conditions={"species": "出售冰毒"})
    assert e.value.body["code"] == "content_policy_violation" and e.value.body["param"] == "conditions"
    assert client.completions.create(model="writer", prompt="好", max_tokens=2).choices[0].text is not None
    counts = refusals(http("GET", server.url + "/metrics", key).text)  # four refusals, by four rules
    assert sorted((name, where, n) for (_, name, where), n in counts.items()) == [
        ("drugs", "prompt", 1.0), ("drugs", "prompt", 1.0), ("violence", "prompt", 1.0), ("violence", "prompt", 1.0)]


def test_the_service_filters_outputs_whole_and_streamed(server, home, key, tmp_path):
    """A block list made of a character the model is known to write, on a second server: the same
    seeds give the same answers, which must now end with content_filter."""
    def answer(seed: int) -> str:
        return server.client(key).completions.create(model="writer", prompt="好", max_tokens=8, seed=seed,
                                                     temperature=1.0).choices[0].text
    seed = next(s for s in range(20) if re.search(HAN, answer(s)))
    block = tmp_path / "written.txt"
    block.write_text(re.search(HAN, answer(seed)).group() + "\n", encoding="utf-8")
    strict = Server(home, {**CONFIG, "keys_db": str(home / "keys.db"),
                           "moderation": {"block_files": [str(block)], "check_prompts": False}}, name="strict")
    try:
        filtered = strict.client(key).completions.create(model="writer", prompt="好", max_tokens=8, seed=seed,
                                                         temperature=1.0)
        assert (filtered.choices[0].text, filtered.choices[0].finish_reason) == ("", "content_filter")
        chunks = list(strict.client(key).completions.create(model="writer", prompt="好", max_tokens=8, seed=seed,
                                                            temperature=1.0, stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
        assert refusals(http("GET", strict.url + "/metrics", key).text) == {("written:1", "written", "output"): 2.0}
    finally:
        strict.stop()
