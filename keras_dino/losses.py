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


def batch_center(teacher_output):
    """Sum over the batch and the row count: the parts of the center's batch mean."""
    teacher_output = at_least_float32(teacher_output)
    return ops.sum(teacher_output, axis=0, keepdims=True), teacher_output.shape[0]
