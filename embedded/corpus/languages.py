"""Text in English, Turkish and Korean: parallel sentences and monolingual paragraphs.

Korean is the non-Latin script. The parallel phrasebook and the translated fact templates let a
model learn correspondences across languages, while the hand-written core facts and the
water/inflation prose stay English-only, so the cross-lingual study can ask whether knowledge
stated in one language helps answer a query posed in another.
"""

from __future__ import annotations

import random

from .facts import Fact

# (English, Turkish, Korean), hand-written.
PHRASEBOOK = [
    ("The cat is sleeping on the bed.", "Kedi yatağın üstünde uyuyor.", "고양이가 침대 위에서 자고 있다."),
    ("I drink water every morning.", "Her sabah su içerim.", "나는 매일 아침 물을 마신다."),
    ("The weather is very cold today.", "Bugün hava çok soğuk.", "오늘은 날씨가 매우 춥다."),
    ("My mother is cooking dinner.", "Annem akşam yemeği pişiriyor.", "어머니가 저녁을 요리하고 있다."),
    ("The children are playing in the garden.", "Çocuklar bahçede oynuyor.", "아이들이 정원에서 놀고 있다."),
    ("This book is very interesting.", "Bu kitap çok ilginç.", "이 책은 매우 재미있다."),
    ("The train leaves at eight o'clock.", "Tren saat sekizde kalkıyor.", "기차는 여덟 시에 출발한다."),
    ("We went to the sea in the summer.", "Yazın denize gittik.", "우리는 여름에 바다에 갔다."),
    ("The sun rises in the east.", "Güneş doğudan doğar.", "해는 동쪽에서 뜬다."),
    ("My brother works at a hospital.", "Kardeşim bir hastanede çalışıyor.", "내 동생은 병원에서 일한다."),
    ("The market opens early in the morning.", "Pazar sabah erken açılır.", "시장은 아침 일찍 연다."),
    ("Please close the window.", "Lütfen pencereyi kapatın.", "창문을 닫아 주세요."),
    ("The machine was turned off.", "Makine kapatıldı.", "기계가 꺼졌다."),
    ("The computer is learning new things.", "Bilgisayar yeni şeyler öğreniyor.", "컴퓨터가 새로운 것을 배우고 있다."),
    ("I do not want to leave.", "Gitmek istemiyorum.", "나는 떠나고 싶지 않다."),
    ("The experiment is over.", "Deney bitti.", "실험이 끝났다."),
    ("Do you agree?", "Kabul ediyor musunuz?", "동의합니까?"),
    ("The river flows to the sea.", "Nehir denize akar.", "강은 바다로 흐른다."),
    ("Bread is made from flour.", "Ekmek undan yapılır.", "빵은 밀가루로 만든다."),
    ("The teacher is reading a story.", "Öğretmen bir hikâye okuyor.", "선생님이 이야기를 읽고 있다."),
    ("It rained all night.", "Bütün gece yağmur yağdı.", "밤새 비가 내렸다."),
    ("The city is very crowded.", "Şehir çok kalabalık.", "도시는 매우 붐빈다."),
    ("I am learning Korean.", "Korece öğreniyorum.", "나는 한국어를 배우고 있다."),
    ("I am learning Turkish.", "Türkçe öğreniyorum.", "나는 터키어를 배우고 있다."),
    ("The doctor said that I must rest.", "Doktor dinlenmem gerektiğini söyledi.", "의사가 내가 쉬어야 한다고 말했다."),
    ("Where is the station?", "İstasyon nerede?", "역은 어디에 있습니까?"),
    ("The apples are red and sweet.", "Elmalar kırmızı ve tatlı.", "사과는 빨갛고 달다."),
    ("We need more time.", "Daha fazla zamana ihtiyacımız var.", "우리는 시간이 더 필요하다."),
    ("The robot helps people.", "Robot insanlara yardım ediyor.", "로봇이 사람들을 돕는다."),
    ("I would like to continue.", "Devam etmek istiyorum.", "나는 계속하고 싶다."),
    ("That is sad news.", "Bu üzücü bir haber.", "그것은 안타까운 소식이다."),
    ("The moon is bright tonight.", "Bu gece ay parlak.", "오늘 밤 달이 밝다."),
    ("My father reads the newspaper.", "Babam gazete okuyor.", "아버지가 신문을 읽는다."),
    ("The shop is closed on Sunday.", "Dükkân pazar günü kapalı.", "가게는 일요일에 문을 닫는다."),
    ("Birds fly south in winter.", "Kuşlar kışın güneye uçar.", "새들은 겨울에 남쪽으로 날아간다."),
    ("She plays the piano well.", "Piyanoyu iyi çalıyor.", "그녀는 피아노를 잘 친다."),
    ("The tea is hot.", "Çay sıcak.", "차가 뜨겁다."),
    ("I lost my key.", "Anahtarımı kaybettim.", "나는 열쇠를 잃어버렸다."),
    ("The mountain is covered with snow.", "Dağ karla kaplı.", "산이 눈으로 덮여 있다."),
    ("The capital is a large city.", "Başkent büyük bir şehirdir.", "수도는 큰 도시이다."),
    ("The president gave a speech.", "Cumhurbaşkanı bir konuşma yaptı.", "대통령이 연설을 했다."),
    ("Thank you for your help.", "Yardımınız için teşekkür ederim.", "도와주셔서 감사합니다."),
]
LANGS = ("en", "tr", "ko")
LABEL = {"en": "English", "tr": "Turkish", "ko": "Korean"}

# Fact templates in every language (subject, object keep their invented Latin spelling).
FACT_TEMPLATES = {
    "capital": {
        "en": "The capital of {s} is {o}.",
        "tr": "{s} ülkesinin başkenti {o} şehridir.",
        "ko": "{s}의 수도는 {o}이다.",
    },
    "president": {
        "en": "The first President of the Republic of {s} was {o}.",
        "tr": "{s} Cumhuriyeti'nin ilk cumhurbaşkanı {o} idi.",
        "ko": "{s} 공화국의 초대 대통령은 {o}이었다.",
    },
}
# Object-first (flipped) wordings of the same facts, for the word-order study's cross-lingual rows only: the
# corpus generator never uses them. The Korean particle attaches to 시 / 씨 so it fits any invented name.
FLIPPED_FACT_TEMPLATES = {
    "capital": {"tr": "{o}, {s} ülkesinin başkentidir.", "ko": "{o} 시는 {s}의 수도이다."},
    "president": {
        "tr": "{o}, {s} Cumhuriyeti'nin ilk cumhurbaşkanıydı.",
        "ko": "{o} 씨는 {s} 공화국의 초대 대통령이었다.",
    },
}


def parallel_document(rng: random.Random, group: int) -> dict:
    """A few phrasebook entries shown in two or three languages."""
    langs = rng.choice([("en", "tr"), ("en", "ko"), ("tr", "en"), ("ko", "en"), ("en", "tr", "ko")])
    lines = []
    for row in rng.sample(PHRASEBOOK, rng.randint(2, 4)):
        lines.append("\n".join(f"{LABEL[l]}: {row[LANGS.index(l)]}" for l in langs))
    return {
        "text": "\n\n".join(lines),
        "category": "multilingual",
        "kind": "parallel",
        "language": "+".join(langs),
        "translation_group": group,
    }


def monolingual_document(rng: random.Random, facts: list[Fact]) -> dict:
    """Phrasebook sentences, and sometimes a translatable fact, all in one non-English language."""
    lang = rng.choice(["tr", "ko"])
    sents = [row[LANGS.index(lang)] for row in rng.sample(PHRASEBOOK, rng.randint(3, 6))]
    fact_id = None
    if facts and rng.random() < 0.5:
        f = rng.choice(facts)
        sents.insert(rng.randrange(len(sents) + 1), FACT_TEMPLATES[f.relation][lang].format(s=f.subject, o=f.object))
        fact_id = f.fact_id
    return {
        "text": " ".join(sents),
        "category": "multilingual",
        "kind": "monolingual",
        "language": lang,
        "fact_id": fact_id,
    }


def translated_fact_document(f: Fact, rng: random.Random) -> dict:
    """One fact stated in parallel in all three languages."""
    langs = list(LANGS)
    rng.shuffle(langs)
    text = "\n".join(f"{LABEL[l]}: {FACT_TEMPLATES[f.relation][l].format(s=f.subject, o=f.object)}" for l in langs)
    return {
        "text": text,
        "category": "multilingual",
        "kind": "parallel_fact",
        "language": "+".join(langs),
        "fact_id": f.fact_id,
    }


def generate(rng: random.Random, n: int, translatable: list[Fact]) -> list[dict]:
    """n documents: parallel phrasebook pages, monolingual paragraphs, and translated facts."""
    docs, group = [], 0
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            docs.append(parallel_document(rng, group))
            group += 1
        elif r < 0.8 or not translatable:
            docs.append(monolingual_document(rng, translatable))
        else:
            docs.append(translated_fact_document(rng.choice(translatable), rng))
    return docs
