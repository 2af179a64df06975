"""The DINO loss: cross-entropy between sharpened, centered teacher and student views."""

from keras import ops

from keras_dino.layers.precision import at_least_float32


def dino_loss(student_output, teacher_output, center, teacher_temp, student_temp=0.1, ncrops=None):
    """The official `DINOLoss.forward` (without its center update).

    The student logits hold `ncrops` chunks of B rows (crop-major), the teacher's two.
    The teacher is `softmax((t - center) / teacher_temp)`, the student
    `log_softmax(s / student_temp)`; the cross-entropy is averaged over all
    (teacher view, student view) pairs except the same-view pairs. The pairs are
    computed as one `(2, ncrops)` matrix of batch means, without materialising them.

    Args:
        student_output: `(ncrops * B, K)` logits.
        teacher_output: `(2 * B, K)` logits.
        center: `(1, K)` running center of the teacher logits.
        teacher_temp: scalar (tensor or float).
        student_temp: scalar, 0.1 officially.
        ncrops: number of student crops; defaults to `len(student) / (len(teacher) / 2)`.

    Returns:
        The scalar loss, float32.

    Example:

    >>> import numpy as np
    >>> s, t = np.zeros((8, 16), "float32"), np.zeros((4, 16), "float32")
    >>> round(float(dino_loss(s, t, np.zeros((1, 16), "float32"), 0.04)), 4)  # log(16)
    2.7726
    """
    student_output = at_least_float32(student_output)
    teacher_output = ops.cast(at_least_float32(teacher_output), student_output.dtype)
    center = ops.cast(center, student_output.dtype)
    batch = teacher_output.shape[0] // 2
    if ncrops is None:
        ncrops = student_output.shape[0] // batch
    dim = student_output.shape[-1]
    log_p = ops.log_softmax(student_output / student_temp, axis=-1)
    log_p = ops.reshape(log_p, (ncrops, batch, dim))
    teacher_temp = ops.cast(teacher_temp, teacher_output.dtype)
    q = ops.softmax((teacher_output - center) / teacher_temp, axis=-1)
    q = ops.reshape(q, (2, batch, dim))
    # cross[i, v] = mean over the batch of -sum_k q_i * log p_v
    cross = -ops.einsum("ibk,vbk->iv", q, log_p) / batch
    same_view = ops.cast(ops.eye(2, ncrops), cross.dtype)
    n_terms = 2 * ncrops - min(2, ncrops)
    return ops.sum(cross * (1.0 - same_view)) / n_terms


def teacher_entropy(teacher_output, center, teacher_temp, ncrops=None):
    """Entropy (nats) of the centered, sharpened teacher distributions, averaged as the loss.

    The cross-entropy of each (teacher view, student view) pair is `H(q) + KL(q || p)`,
    so `dino_loss = teacher_entropy + KL`, with the teacher views weighted by the number
    of student views the loss pairs them with (equal weights from 2 crops on). The two
    parts are the standard way to watch for collapse (the DINO paper, section 5.3): an
    entropy near 0 means one prototype for every image, near `log(K)` a uniform output;
    a KL (`loss - entropy`) near 0 means the student has nothing left to learn.

    Args:
        teacher_output: `(2 * B, K)` logits.
        center: `(1, K)` center.
        teacher_temp: scalar.
        ncrops: the student's crops (for the pair weights; any value >= 2 weighs the two
            teacher views equally).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> t = np.zeros((4, 16), "float32")  # a uniform teacher: log(16)
    >>> round(float(teacher_entropy(t, np.zeros((1, 16), "float32"), 0.04)), 4)
    2.7726
    """
    teacher_output = at_least_float32(teacher_output)
    center = ops.cast(center, teacher_output.dtype)
    batch = teacher_output.shape[0] // 2
    teacher_temp = ops.cast(teacher_temp, teacher_output.dtype)
    # teacher_output / T - center / T: the loss's softmax input up to rounding, written
    # differently so that a compiler cannot merge the two and change the loss's program.
    log_q = ops.log_softmax(teacher_output / teacher_temp - center / teacher_temp, axis=-1)
    per_view = -ops.sum(ops.exp(log_q) * log_q, axis=-1)
    per_view = ops.mean(ops.reshape(per_view, (2, batch)), axis=1)
    if ncrops is not None and ncrops < 2:  # one crop: only teacher view 1 is paired
        return per_view[1]
    return ops.mean(per_view)


def dino_loss_terms(
    student_output, teacher_output, center, teacher_temp, student_temp=0.1, ncrops=None
):
    """`(loss, teacher_entropy, kl)`: the DINO loss and its two parts (`loss = H + KL`).

    Example:

    >>> import numpy as np
    >>> s, t = np.zeros((8, 16), "float32"), np.zeros((4, 16), "float32")
    >>> loss, entropy, kl = dino_loss_terms(s, t, np.zeros((1, 16), "float32"), 0.04)
    >>> round(float(entropy), 4), abs(float(kl)) < 1e-5  # uniform teacher = uniform student
    (2.7726, True)
    """
    loss = dino_loss(student_output, teacher_output, center, teacher_temp, student_temp, ncrops)
    if ncrops is None:
        ncrops = student_output.shape[0] // (teacher_output.shape[0] // 2)
    entropy = teacher_entropy(teacher_output, center, teacher_temp, ncrops)
    return loss, entropy, loss - entropy


def batch_center(teacher_output):
    """Sum over the batch and the row count: the parts of the center's batch mean."""
    teacher_output = at_least_float32(teacher_output)
    return ops.sum(teacher_output, axis=0, keepdims=True), teacher_output.shape[0]
