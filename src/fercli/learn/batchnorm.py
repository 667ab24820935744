"""Batch normalisation that trains at TensorFlow's fused speed.

Keras 3 normalises a training batch with separate ops (moments, then the normalisation) and
differentiates through each of them; TensorFlow's fused batch normalisation does the same
arithmetic in one op and one gradient op. On the general recipe's network (48x48 crops,
batches of 64, two cores) a training step took 75.9 ms instead of 96.7 (docs/speed.md,
"Training and cross-validation"). The layer is Keras's own otherwise: the same weights in
the same order, the same moving averages (the fused op's Bessel correction of the batch
variance is taken back out); Keras's own arithmetic for flat inputs (the hidden layer's).
"""

from __future__ import annotations

_LAYER_CLASS = None


def batch_normalization():
    """A new batch normalisation layer (keras.layers.BatchNormalization's defaults) that
    trains and predicts with TensorFlow's fused op on images (4-d inputs, channels last)."""
    global _LAYER_CLASS
    if _LAYER_CLASS is None:
        _LAYER_CLASS = _layer_class()
    return _LAYER_CLASS()


def _layer_class():
    import keras
    import tensorflow as tf

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        """keras.layers.BatchNormalization, with tf's fused op on 4-d inputs."""

        def call(self, inputs, training=None, mask=None):
            fused = (
                mask is None
                and len(inputs.shape) == 4
                and self.axis in (-1, 3)
                and self.scale
                and self.center
                and not self.renorm
            )
            if not fused:
                return super().call(inputs, training=training, mask=mask)
            x = tf.cast(inputs, tf.float32)
            if not (training and self.trainable):
                outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    x,
                    tf.convert_to_tensor(self.gamma),
                    tf.convert_to_tensor(self.beta),
                    mean=tf.convert_to_tensor(self.moving_mean),
                    variance=tf.convert_to_tensor(self.moving_variance),
                    epsilon=self.epsilon,
                    is_training=False,
                )
                return tf.cast(outputs, self.compute_dtype)
            share = 1.0 - self.momentum
            old_variance = tf.convert_to_tensor(self.moving_variance)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x,
                tf.convert_to_tensor(self.gamma),
                tf.convert_to_tensor(self.beta),
                mean=tf.convert_to_tensor(self.moving_mean),
                variance=old_variance,
                epsilon=self.epsilon,
                is_training=True,
                exponential_avg_factor=share,
            )
            # The fused op averages in the batch's variance over n - 1 (n values a channel);
            # Keras's layer over n. variance = (1 - share) old + share s2 n / (n - 1).
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            variance -= (variance - (1.0 - share) * old_variance) / tf.maximum(count, 1.0)
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
            return tf.cast(outputs, self.compute_dtype)

    return FusedBatchNormalization
