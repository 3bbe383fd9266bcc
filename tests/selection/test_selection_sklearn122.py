"""``protocol: official`` k-means: scikit-learn 1.2.2's ``KMeans(n_clusters, random_state=12345)`` on any scikit-learn.

The expected label vectors below were recorded from a real scikit-learn 1.2.2 (numpy 1.26.4, Python 3.11.7,
OMP_NUM_THREADS=1, in a throwaway venv made as scripts/check-official.sh makes it) by
``KMeans(k, random_state=12345).fit(problem(seed, n, d, dtype)).labels_`` with ``problem`` as defined here.
The installed scikit-learn (>= 1.3) gives other labels for most of them (checked below), so these tests fail
if presel fell back to today's seeding.
"""

from __future__ import annotations

import numpy as np
import pytest

from presel.selection.sklearn122 import kmeans_122, kmeans_plusplus_indices, l2_normalise, same_partition


def problem(seed: int, n: int, d: int, dtype: str) -> np.ndarray:
    rs = np.random.RandomState(seed)
    x = rs.randn(n, d)
    x[n // 2:] = x[rs.randint(n // 2, size=n - n // 2)]  # repeated rows, as records sharing an image
    x = x.astype(dtype)
    return x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]


# (seed, n, d, dtype, k, labels of scikit-learn 1.2.2)
EXPECTED = [
    (1, 200, 16, "float32", 2, (
        "1000110001100100101101010100100000101010101011111101101011110000101100101001011100110101100111001110"
        "0000000110101100100010110110101011110011100010000100111110110010110101101100010110111000010101001000"
    )),
    (2, 300, 8, "float32", 3, (
        "2220220012200211020110101220001021111121010200120022102201020022210022012020000210102022111210110201"
        "1010001102101011210000012012200110021010121011101010012102211020210200110102002111010200121210012122"
        "0022221002200120011001210212012011111211211211000200001110221111211221121211012000002011212121210020"
    )),
    (3, 500, 32, "float32", 5, (
        "3001104142131403413444121044141411203144302200200144302214313132341443024132402042002042031231210144"
        "0143341130001024230313432130023042310134200312222100243330141444222321040122224043012232323100001304"
        "2140343211411211144110110211314300330142302131220434143031142132112114142331422333231011023024134134"
        "4041011201204401230321310341213112042443042430434340001411404110202340030021040402033213213220332444"
        "2401222041400023124020201244201423334442331311132013212412031002214142303314112341222011124022230130"
    )),
    (4, 400, 12, "float64", 4, (
        "2301033032021230232113321331130101300113321303110320332302111120200121032202110220323302230301301102"
        "0302331210020330120320212300201012023332211001301011303300101021020223120022221103111000323311333131"
        "1003310121203023213001110222321200323300333330022133233311022023210320312031211003023111311320330312"
        "2301211003030033322130220130332321320310033020321231031000010131122212211200221100322201110323011021"
    )),
]


@pytest.mark.parametrize("seed,n,d,dtype,k,labels", EXPECTED, ids=[f"n{e[1]}-k{e[4]}-{e[3]}" for e in EXPECTED])
def test_labels_equal_scikit_learn_1_2_2(seed, n, d, dtype, k, labels):
    want = np.array([int(c) for c in "".join(labels)])
    got, inertia, centres = kmeans_122(problem(seed, n, d, dtype), k)
    assert got.tolist() == want.tolist()
    assert centres.shape == (k, d) and inertia > 0


def test_installed_scikit_learn_differs_so_the_check_has_teeth():
    from sklearn.cluster import KMeans

    differ = 0
    for seed, n, d, dtype, k, labels in EXPECTED:
        today = KMeans(k, random_state=12345, n_init=10).fit(problem(seed, n, d, dtype)).labels_
        differ += today.tolist() != [int(c) for c in "".join(labels)]
    assert differ >= 1


def test_kmeans_plusplus_first_centre_is_randint_and_centres_are_distinct_rows():
    x = problem(5, 120, 6, "float32")
    xc = x - x.mean(axis=0)
    idx = kmeans_plusplus_indices(xc, 4, np.random.RandomState(12345))
    assert idx[0] == np.random.RandomState(12345).randint(120)
    assert len(set(idx.tolist())) == 4


def test_same_partition_and_normalise():
    assert same_partition(np.array([0, 0, 1, 2]), np.array([2, 2, 0, 1]))
    assert not same_partition(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    x = np.array([[3, 4], [0, 0]], dtype=np.float32)
    y = l2_normalise(x)
    assert y.dtype == np.float32 and y[0].tolist() == [0.6000000238418579, 0.800000011920929] and y[1].tolist() == [0, 0]


def test_sums_as_numpy_1_computes_them():
    """k-means++ compares candidate potentials summed in float32; numpy 2 sums in another order than numpy 1.x
    (scikit-learn 1.2.2's), which can flip a near tie. Expected values recorded with numpy 1.26.4
    (``a.sum(axis=1)`` in the venv scripts/check-official.sh makes); the installed numpy 2 gives 99169.8515625 for
    the first float32 row and ...fc0p+12 for the first float64 row."""
    from presel.selection.sklearn122 import sum_rows_numpy1

    a = (np.random.RandomState(0).rand(3, 20000) * 10).astype(np.float32)
    assert sum_rows_numpy1(a).tolist() == [99169.84375, 99892.96875, 99866.28125]
    b = np.random.RandomState(1).rand(2, 9000)
    assert [float(v).hex() for v in sum_rows_numpy1(b)] == ["0x1.17941a9ce0fc1p+12", "0x1.1b7d3cac9ac59p+12"]
    small = np.arange(1, 21, dtype=np.float32)[None, :] / 7  # one block: 8 running sums, then the tail in turn
    r = [small[0, j] + small[0, j + 8] for j in range(8)]
    want = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for j in range(16, 20):
        want = want + small[0, j]
    assert sum_rows_numpy1(small)[0] == want
