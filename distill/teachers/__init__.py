"""Layer 2: frozen teachers behind the canonical velocity contract ``teacher(x_s, s) -> v``."""

from distill.teachers.base import Teacher
from distill.teachers.checkpoint import TeacherCheckpointError, load_teacher, save_teacher
from distill.teachers.gmm import GMMTeacher

__all__ = ["Teacher", "GMMTeacher", "load_teacher", "save_teacher", "TeacherCheckpointError"]
