"""Stage-1 augmentations (supplementary section 1): random frame crops, caption word swaps and synonyms.

Everything is seeded by the caller: crops draw from a ``torch.Generator``, captions from a
``numpy.random.Generator``, so a run is reproducible. Synonyms come from :data:`SYNONYMS`, a small
hand-written table of words common in video captions (people, animals, vehicles, places, actions,
colours, sizes); no WordNet download is needed.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

from glfa.errors import DataError

# Each line is one group of interchangeable words; every word maps to the others of its group.
# A word appears in one group only, so the table is symmetric.
_SYNONYM_GROUPS = """
man guy gentleman fellow
woman lady
men guys gentlemen
women ladies
person individual someone
people persons folks crowd
boy lad
girl lass
child kid youngster
children kids youngsters
baby infant toddler
friend companion buddy
couple pair duo
team squad group
player athlete sportsman
worker labourer employee
doctor physician
police cops officers
soldier trooper
chef cook
dog puppy pup hound
dogs puppies hounds
cat kitten kitty
cats kittens
horse pony steed
bird birdie fowl
birds fowls
fish trout
cow cattle bull
sheep lamb
monkey ape chimp
insect bug
car automobile vehicle auto
cars automobiles vehicles
truck lorry
bike bicycle cycle
motorbike motorcycle scooter
boat ship vessel
plane airplane aircraft
train railway locomotive
bus coach
road street avenue
path trail track
house home residence
building structure tower
room chamber hall
kitchen cookhouse
city town metropolis
village hamlet
field meadow pasture
forest woods woodland
tree oak pine
trees oaks pines
flower blossom bloom
flowers blossoms blooms
grass lawn turf
mountain peak summit
mountains peaks summits
hill mound slope
river stream creek
lake pond
sea ocean
beach shore coast seaside
wave surf swell
waves breakers
sky heavens
cloud cloudlet
clouds overcast
sun sunshine sunlight
rain rainfall drizzle
snow snowfall
water liquid
fire flame blaze
smoke fumes
rock stone boulder
rocks stones boulders
sand dune
desert wasteland
island isle
garden yard backyard
park playground
stage platform
screen display monitor
computer laptop
phone smartphone cellphone
camera camcorder
picture photo image
video clip footage film
ball sphere
food meal dish
fruit produce
table desk counter
chair seat stool
bed mattress
door doorway entrance
window pane
wall fence barrier
box crate carton
bag sack
cup mug glass
bottle flask
shirt top tee
dress gown frock
hat cap
shoes sneakers boots
hand palm
hands palms
face visage
head skull
eyes pupils
hair locks
body figure physique
walk stroll amble
walks strolls ambles
walking strolling ambling
run jog sprint dash
runs jogs sprints dashes
running jogging sprinting dashing
jump leap hop bound
jumps leaps hops bounds
jumping leaping hopping bounding
swim paddle
swims paddles
swimming paddling
fly soar glide
flies soars glides
flying soaring gliding
dance twirl
dances twirls
dancing twirling
play frolic
plays frolics
playing frolicking
talk speak chat converse
talks speaks chats converses
talking speaking chatting conversing
look gaze stare peer
looks gazes stares peers
looking gazing staring peering
watch observe view
watches observes views
watching observing viewing
eat dine feed
eats dines feeds
eating dining feeding
drink sip
drinks sips
drinking sipping
sit rest
sits rests
sitting resting seated
stand stay
stands stays
standing staying
drive steer
drives steers
driving steering
ride travel
rides travels
riding traveling travelling
move shift
moves shifts
moving shifting
turn rotate spin
turns rotates spins
turning rotating spinning
hold grip grasp clutch
holds grips grasps clutches
holding gripping grasping clutching
throw toss hurl
throws tosses hurls
throwing tossing hurling
catch grab seize
catches grabs seizes
catching grabbing seizing
push shove press
pushes shoves presses
pushing shoving pressing
pull drag tug
pulls drags tugs
pulling dragging tugging
open unlock
opens unlocks
opening unlocking
close shut
closes shuts
closing shutting
climb ascend scale
climbs ascends scales
climbing ascending scaling
fall drop tumble
falls drops tumbles
falling dropping tumbling
cut slice chop
cuts slices chops
cutting slicing chopping
smile grin beam
smiles grins beams
smiling grinning beaming
laugh chuckle giggle
laughs chuckles giggles
laughing chuckling giggling
cry weep sob
cries weeps sobs
crying weeping sobbing
sing chant
sings chants
singing chanting
shows displays presents
showing displaying presenting
build construct assemble
builds constructs assembles
constructing assembling
work labour toil
works labours toils
working labouring toiling
bake roast
bakes roasts
cooking baking frying
write scribble
writes scribbles
writing scribbling
read peruse
reads peruses
reading perusing
begin start commence
begins starts commences
finish end complete
finishes ends completes
shake tremble wobble
shakes trembles wobbles
shaking trembling wobbling
big large enormous
small little miniature
tall high lofty
short brief
long lengthy extended
wide broad
narrow thin slim
fat plump chubby
old aged elderly
young youthful
new fresh modern
ancient antique
fast quick rapid swift
slow sluggish leisurely
quickly rapidly swiftly
slowly gradually
happy cheerful joyful glad
sad unhappy sorrowful
angry furious mad
calm peaceful serene tranquil
quiet silent hushed
loud noisy
beautiful pretty lovely gorgeous
ugly unsightly hideous
bright shiny brilliant luminous
dark dim shadowy gloomy
clean spotless tidy
dirty muddy grimy filthy
wet damp soaked
dry arid parched
hot warm heated
cold chilly cool icy
hard firm solid
soft gentle tender
strong powerful mighty
weak feeble frail
rich wealthy affluent
busy crowded bustling
empty vacant bare
full filled packed
near nearby
far distant remote
red crimson scarlet
blue azure navy
green emerald olive
yellow golden amber
white ivory snowy
black ebony
grey gray silver
brown tan chocolate
orange tangerine
purple violet lilac
pink rosy
colourful colorful vivid
many numerous several
few handful
some various assorted
huge massive giant gigantic
tiny minute wee
around about
inside within indoors
outside outdoors outdoor
above over overhead
below under beneath underneath
next beside alongside
toward towards
across throughout
through via
together jointly
alone solo solitary
""".strip().splitlines()


def _build_synonyms(groups: list[str]) -> dict[str, tuple[str, ...]]:
    """word -> the other words of its group (first group wins for a repeated word)."""
    table: dict[str, tuple[str, ...]] = {}
    for line in groups:
        words = line.split()
        for word in words:
            others = tuple(w for w in words if w != word)
            if others and word not in table:
                table[word] = others
    return table


#: word -> tuple of synonyms (lowercase, single words), built from the groups above.
SYNONYMS: dict[str, tuple[str, ...]] = _build_synonyms(_SYNONYM_GROUPS)

# A whitespace token = leading punctuation, the word core, trailing punctuation.
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$")


def random_crop(frames: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop each frame at a random place and size, resized back to the input size.

    Parameters
    ----------
    frames : torch.Tensor
        ``[n, h, w, c]`` uint8 or float frames (channels last, as the store keeps them).
    scale : float
        Smallest side fraction of a crop, in (0, 1]; each frame draws its own fraction
        uniformly in ``[scale, 1]`` and its own position. ``scale = 1`` returns a copy.
    generator : torch.Generator, optional
        Source of randomness (CPU); seed it for reproducible crops.

    Returns
    -------
    torch.Tensor
        ``[n, h, w, c]`` frames of the input dtype (uint8 is rounded and clipped).
    """
    if frames.ndim != 4:
        raise DataError(f"expected frames [n, h, w, c], got shape {tuple(frames.shape)}", field="frames")
    if not 0.0 < scale <= 1.0:
        raise DataError(f"expected a crop scale in (0, 1], got {scale}", field="scale")
    n, h, w, _ = frames.shape
    fractions = scale + (1.0 - scale) * torch.rand(n, generator=generator)  # [n]
    corners = torch.rand(n, 2, generator=generator)  # [n, 2] relative (row, col) of the crop
    x = frames.permute(0, 3, 1, 2).float()  # [n, c, h, w]
    out = torch.empty_like(x)
    for i in range(n):
        ch = max(1, int(round(float(fractions[i]) * h)))
        cw = max(1, int(round(float(fractions[i]) * w)))
        top = int(corners[i, 0] * (h - ch + 1))
        left = int(corners[i, 1] * (w - cw + 1))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = crop[0] if (ch, cw) == (h, w) else F.interpolate(
            crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0]
    out = out.permute(0, 2, 3, 1)  # [n, h, w, c]
    if frames.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(frames.dtype)


def _match_case(word: str, like: str) -> str:
    """``word`` capitalised the way ``like`` is (all caps, first capital, or lowercase)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def augment_caption(
    text: str, rng: np.random.Generator, swap_prob: float = 0.1, synonym_prob: float = 0.1
) -> str:
    """Replace words by synonyms from :data:`SYNONYMS`, then swap random word pairs.

    Parameters
    ----------
    text : str
        The caption; words are whitespace-separated, punctuation stays where it was.
    rng : numpy.random.Generator
        Seeded source of randomness.
    swap_prob : float
        Each word position is, with this probability, swapped with a random position.
    synonym_prob : float
        Each word found in the table is, with this probability, replaced by one of its synonyms.

    Returns
    -------
    str
        The augmented caption, words joined by single spaces.
    """
    for name, p in (("swap_prob", swap_prob), ("synonym_prob", synonym_prob)):
        if not 0.0 <= p <= 1.0:
            raise DataError(f"expected a probability in [0, 1], got {p}", field=name)
    parts = [_TOKEN.match(token).groups() for token in text.split()]  # (lead, core, trail)
    cores = [core for _, core, _ in parts]
    for i, core in enumerate(cores):
        options = SYNONYMS.get(core.lower())
        if options and rng.random() < synonym_prob:
            cores[i] = _match_case(options[int(rng.integers(len(options)))], core)
    n = len(cores)
    for i in range(n):
        if n > 1 and rng.random() < swap_prob:
            j = int(rng.integers(n))
            cores[i], cores[j] = cores[j], cores[i]
    return " ".join(lead + core + trail for (lead, _, trail), core in zip(parts, cores))
